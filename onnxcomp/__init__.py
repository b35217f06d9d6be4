"""onnxcomp: a graph-level ONNX model optimizer.

    import onnxcomp
    graph = onnxcomp.load("model.onnx")
    records = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup,fold-bn")).run(graph)
    onnxcomp.save(graph, "out.onnx")
"""

from onnxcomp.errors import InputError, OnnxcompError, ToleranceError, VerificationError
from onnxcomp.io import load, load_model, save
from onnxcomp.manager import PassManager, PassRecord
from onnxcomp.optimize import optimize
from onnxcomp.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline import parse_pipeline
from onnxcomp.registry import all_passes, get_pass, register_pass
# A callable package (torch is imported only when it runs): onnxcomp.distill(teacher, student, data, options).
from onnxcomp import distill

Pipeline = PassManager

__all__ = [
    "InputError", "OnnxcompError", "ToleranceError", "VerificationError",
    "load", "load_model", "save", "PassManager", "Pipeline", "PassRecord", "optimize",
    "Pass", "PassContext", "PassReport", "parse_pipeline", "all_passes", "get_pass", "register_pass",
    "distill",
]
__version__ = "0.1.0"
