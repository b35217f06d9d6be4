"""onnxcomp: a graph-level ONNX model optimizer.

    import onnxcomp
    graph = onnxcomp.load("model.onnx")
    records = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup,fold-bn")).run(graph)
    onnxcomp.save(graph, "out.onnx")
"""

# A callable package (torch is imported only when it runs): onnxcomp.distill(teacher, student, data, options).
from onnxcomp import distill
from onnxcomp.compress import compress
from onnxcomp.errors import InputError, OnnxcompError, ToleranceError, VerificationError
from onnxcomp.graph.convert import load
from onnxcomp.graph.load import load_model
from onnxcomp.graph.save import save
from onnxcomp.optimize import optimize
from onnxcomp.pipeline.manager import PassManager, PassRecord
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import all_passes, get_pass, register_pass
from onnxcomp.pipeline.text import parse_pipeline

Pipeline = PassManager

__all__ = [
    "InputError", "OnnxcompError", "ToleranceError", "VerificationError",
    "load", "load_model", "save", "PassManager", "Pipeline", "PassRecord", "optimize",
    "Pass", "PassContext", "PassReport", "parse_pipeline", "all_passes", "get_pass", "register_pass",
    "distill", "compress",
]
__version__ = "0.1.0"
