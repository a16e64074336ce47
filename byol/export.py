"""Checkpoint -> ONNX encoder: the online encoder f_theta with L2-normalised output, its metadata, a parity
check against torch, and an optional int8 model with its measured cost in retrieval quality.

The exported graph maps `images` (N,3,H,W float32, already resized, cropped and normalised by the ONE
evaluation transform, byol.preprocess.Preprocess) to `embeddings` (N,D float32 unit vectors, so cosine
similarity is a dot product). BatchNorm runs in inference mode (running statistics, folded into the
convolutions by the exporter). The batch axis is dynamic.

Exporter: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript). With torch 2.14 the TorchScript
exporter (dynamo=False) still works but warns that it is deprecated and will be removed; the dynamo path is the
maintained one, handles dynamic batch through `torch.export.Dim`, and its optimiser folds BatchNorm and
constants (33 nodes instead of 42 for resnet-tiny). Opset 18: the exporter's native opset, run by every
onnxruntime >= 1.14.

Metadata (ONNX `metadata_props`, all strings, keys prefixed `byol_search.`): format, preprocess
(Preprocess.to_dict JSON), input_size, resize, resize_rule, mean, std, embedding_dim, checkpoint_sha256,
train_config and model_config (JSON), step, quantization, version, plus a plain-words description of the
input and output. `read_metadata(path)` returns them decoded; a program without this project can use
the model from these alone.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from byol import __version__
from byol.preprocess import Preprocess

if TYPE_CHECKING:
    import onnx
    import torch
    import torch.nn as nn

_T = TypeVar("_T")

# torch is imported inside the functions that export: reading metadata and quantising stay light, so the
# embedding side (index/embed.py) can use this module without loading torch

EXPORT_FORMAT = "byol-search/encoder/1"
DEFAULT_OPSET = 18
PARITY_BATCHES = (1, 7, 64)
MAX_ABS_DIFF = 1e-4  # onnxruntime vs torch, per embedding component
MIN_COSINE = 0.9999  # onnxruntime vs torch, per image
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
_PREFIX = "byol_search."


class ExportError(RuntimeError):
    """The exported model does not reproduce the checkpoint (the message has the numbers)."""


def normalized_encoder(encoder: nn.Module) -> nn.Module:
    """f_theta followed by L2 normalisation, as a module: B,3,H,W -> B,D unit vectors."""
    import torch.nn as nn
    import torch.nn.functional as F

    class NormalizedEncoder(nn.Module):
        def __init__(self, encoder: nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.encoder(images), dim=1)

    return NormalizedEncoder(encoder).eval()


# ------------------------------------------------------------------------------------------------ export
def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    check_folder: str | Path | None = None,
    labelled_folder: str | Path | None = None,
    int8_path: str | Path | None = None,
    quantize_method: str = "static",
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Export the checkpoint's online encoder to `out_path` (atomically) and verify it.

    Parity: onnxruntime against torch on real images (an even spread over the sorted files of `check_folder`,
    see `sample_images`; else generated ones) at batch sizes 1, 7 and 64; raises ExportError when the max abs
    difference exceeds 1e-4 or a cosine falls below 0.9999 (nothing is written then). `quantize="int8"` also
    writes an int8 model (to `int8_path`, default <out>.int8.onnx) and measures its cost (see `quantize_int8`).

    Returns {"path", "metadata" (as read_metadata gives it), "parity" (per batch size), "int8" (when asked)}.
    """
    import onnx
    import torch

    from byol.checkpoint import load_encoder
    from byol.fileio import atomic_write

    out_path = Path(out_path)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: only 'int8' is supported")
    encoder, preprocess, info = load_encoder(checkpoint)
    model = normalized_encoder(encoder)
    size = preprocess.size

    # -- export
    t0 = time.perf_counter()
    proto = to_onnx(model, torch.from_numpy(preprocess.batch(generated_images(2, size))), opset)
    metadata = _metadata(preprocess, info, quantization="none")
    _set_metadata(proto, metadata)
    data = proto.SerializeToString()
    log(f"exported {info['model_config'].get('backbone')} ({info['dim']}-d, {size} px) with opset {opset} "
        f"in {time.perf_counter() - t0:.1f} s")

    # -- verify before writing anything
    images = sample_images(check_folder, max(PARITY_BATCHES), size)
    x = preprocess.batch(images)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    session = _session(data)
    parity = {}
    for b in PARITY_BATCHES:
        xb = np.resize(x, (b,) + x.shape[1:]) if b > len(x) else x[:b]  # repeat images when there are few
        got = session.run(None, {INPUT_NAME: xb})[0]
        want = np.resize(ref, (b, ref.shape[1])) if b > len(ref) else ref[:b]
        diff = float(np.abs(got - want).max())
        cos = float(((got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))).min())
        parity[b] = {"max_abs_diff": diff, "min_cosine": cos}
        if not (diff <= MAX_ABS_DIFF and cos >= MIN_COSINE):
            raise ExportError(f"onnxruntime disagrees with torch at batch {b}: max abs diff {diff:.3g} "
                              f"(limit {MAX_ABS_DIFF}), min cosine {cos:.6f} (limit {MIN_COSINE}); nothing written")
    log("parity with torch: " + ", ".join(
        f"batch {b}: max|diff| {p['max_abs_diff']:.1e}, min cos {p['min_cosine']:.6f}" for b, p in parity.items()))
    onnx.checker.check_model(proto)
    atomic_write(out_path, lambda f: f.write(data))
    report = {"path": str(out_path), "metadata": read_metadata(out_path), "parity": parity}

    if quantize == "int8":
        int8_path = Path(int8_path) if int8_path else out_path.with_suffix(".int8.onnx")
        report["int8"] = quantize_int8(out_path, int8_path, check_folder=check_folder,
                                       labelled_folder=labelled_folder, method=quantize_method, log=log)
    return report


def to_onnx(model: nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """torch module -> onnx.ModelProto with the exporter and settings chosen above (dynamic batch axis)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    program = _quiet(lambda: torch.onnx.export(
        model, (example,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}}, external_data=False,
        optimize=True, verbose=False))
    assert program is not None  # dynamo=True always returns the program
    proto: onnx.ModelProto = program.model_proto
    return proto


def _metadata(preprocess: Preprocess, info: dict[str, Any], quantization: str) -> dict[str, str]:
    return {
        "format": EXPORT_FORMAT,
        "preprocess": json.dumps(preprocess.to_dict()),
        "input_size": str(preprocess.size),
        "resize": str(preprocess.resize),
        "resize_rule": preprocess.resize_rule,
        "mean": json.dumps(list(preprocess.mean)),
        "std": json.dumps(list(preprocess.std)),
        "input": f"{INPUT_NAME}: float32 N x 3 x {preprocess.size} x {preprocess.size}, RGB scaled to [0, 1] then "
                 f"(x - mean) / std, after resizing the shorter side to {preprocess.resize} (bilinear) and "
                 f"centre-cropping {preprocess.size} x {preprocess.size}",
        "output": f"{OUTPUT_NAME}: float32 N x {info['dim']}, L2-normalised (cosine similarity = dot product)",
        "embedding_dim": str(info["dim"]),
        "checkpoint_sha256": info["sha256"],
        "step": str(info["step"]),
        "model_config": json.dumps(info["model_config"]),
        "train_config": json.dumps(info.get("config", {}), default=str),
        "init": json.dumps(info.get("init", {"kind": "none"})),
        "quantization": quantization,
        "version": __version__,
    }


def _set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = _PREFIX + k, v
    proto.producer_name, proto.producer_version = "byol-search", __version__
    proto.doc_string = "BYOL online encoder with L2-normalised output; see metadata_props byol_search.*"


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The byol-search metadata of an exported model, decoded.

    Keys: format, size, resize, mean, std, resize_rule (so Preprocess.from_dict(meta) works), preprocess
    (the same, as a dict), dim, checkpoint_sha256, step, model_config, train_config, init, quantization, version,
    input, output, opset. Raises ValueError for a file that is not a byol-search encoder.
    """
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise ValueError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    raw = {p.key[len(_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(_PREFIX)}
    if raw.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{onnx_path}: not a byol-search encoder (no {_PREFIX}format={EXPORT_FORMAT} metadata); "
                         "export one with `byol-search export CHECKPOINT -o encoder.onnx`")
    pre = json.loads(raw["preprocess"])
    return {
        **pre,
        "preprocess": pre,
        "format": raw["format"],
        "dim": int(raw["embedding_dim"]),
        "checkpoint_sha256": raw["checkpoint_sha256"],
        "step": int(raw.get("step", 0)),
        "model_config": json.loads(raw.get("model_config", "{}")),
        "train_config": json.loads(raw.get("train_config", "{}")),
        "init": json.loads(raw.get("init", '{"kind": "none"}')),
        "quantization": raw.get("quantization", "none"),
        "version": raw.get("version", ""),
        "input": raw.get("input", ""),
        "output": raw.get("output", ""),
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
    }


# ------------------------------------------------------------------------------------------------ int8
def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    check_folder: str | Path | None = None,
    labelled_folder: str | Path | None = None,
    method: str = "static",
    n_calibration: int = 128,
    n_overlap: int = 512,
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Write an int8 copy of an exported encoder and measure what it costs.

    method "static": QDQ (int8 weights per channel, uint8 activations) calibrated with MinMax on
    `n_calibration` images; "dynamic": weights only, activations quantised on the fly (no calibration).
    Static is the default because it is the faster of the two on x86 CPUs (VNNI int8 convolutions; dynamic
    quantisation runs ConvInteger, slower than fp32 here: see scripts/bench_embed.py).

    Cost: top-10 neighbour overlap with the fp32 model over `n_overlap` images (mean |top10_fp32 & top10_int8|
    / 10, each image's neighbours among the others), and, when `labelled_folder` is given, weighted-kNN top-1
    of both models on it. Returns {"path", "method", "top10_overlap", "n_images", "knn_top1_fp32",
    "knn_top1_int8", "knn_top1_change", "seconds"} (kNN keys only with a labelled folder).
    """
    from byol.fileio import atomic_write

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    pre = Preprocess.from_dict(read_metadata(fp32_path))
    t0 = time.perf_counter()
    images = sample_images(check_folder, max(n_calibration, n_overlap), pre.size)
    x = pre.batch(images)
    proto = _quantized(fp32_path, int8_path, x, n_calibration, method)
    _set_metadata(proto, {**_own_metadata(fp32_path), "quantization": f"int8-{method}"})
    data = proto.SerializeToString()

    report = {"path": str(int8_path), "method": method,
              **_quantization_cost(fp32_path.read_bytes(), data, x[:n_overlap], pre, labelled_folder)}
    atomic_write(int8_path, lambda f: f.write(data))
    report["seconds"] = time.perf_counter() - t0
    log(f"int8 ({method}) -> {int8_path}: top-10 overlap with fp32 {report['top10_overlap']:.3f} on "
        f"{report['n_images']} images"
        + (f"; kNN top-1 {report['knn_top1_fp32']:.3f} -> {report['knn_top1_int8']:.3f}" if labelled_folder else ""))
    return report


def _quantized(fp32_path: Path, int8_path: Path, x: np.ndarray, n_calibration: int,
               method: str) -> onnx.ModelProto:
    """The quantised model, made through temporary files beside `int8_path` (removed whatever happens).

    Static quantisation calibrates on batches of 32 of `x`: its first `n_calibration`, rounded up to whole
    batches."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime has no type information
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: x[i:i + 32]} for i in range(0, min(len(x), n_calibration), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    tmp_dir = int8_path.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    prepared = tmp_dir / f".{int8_path.name}.prep.onnx"
    raw_out = tmp_dir / f".{int8_path.name}.raw.onnx"
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        if method == "static":
            quantize_static(str(prepared), str(raw_out), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        elif method == "dynamic":
            quantize_dynamic(str(prepared), str(raw_out), weight_type=QuantType.QInt8, per_channel=True)
        else:
            raise ValueError(f"quantize method {method!r}: choose static or dynamic")
        proto: onnx.ModelProto = onnx.load(str(raw_out))
        return proto
    finally:
        prepared.unlink(missing_ok=True)
        raw_out.unlink(missing_ok=True)
        for p in tmp_dir.glob(f".{int8_path.name}.*"):
            p.unlink(missing_ok=True)


def _own_metadata(onnx_path: Path) -> dict[str, str]:
    """byol-search's metadata entries of an ONNX file, without their prefix, as stored (strings)."""
    import onnx

    src = onnx.load(str(onnx_path))
    return {p.key[len(_PREFIX):]: p.value for p in src.metadata_props if p.key.startswith(_PREFIX)}


def _quantization_cost(fp32_model: bytes, int8_model: bytes, x: np.ndarray, pre: Preprocess,
                       labelled_folder: str | Path | None) -> dict[str, Any]:
    """What int8 costs in retrieval quality: top10_overlap, n_images, max_cosine_drift on the images `x`,
    and with a labelled folder knn_top1_fp32, knn_top1_int8, knn_top1_change."""
    fp32, int8 = _session(fp32_model), _session(int8_model)
    a, b = _run(fp32, x), _run(int8, x)
    cost: dict[str, Any] = {"top10_overlap": top_k_overlap(a, b, k=10), "n_images": len(a),
                            "max_cosine_drift": float(1 - (a * b).sum(1).min())}
    if labelled_folder is not None:
        from byol.evaluate import load_labelled
        from byol.probe import knn_top1

        tr_p, tr_y, te_p, te_y, _ = load_labelled(labelled_folder)
        tr_x, tr_keep = _load_batch(tr_p, pre)
        te_x, te_keep = _load_batch(te_p, pre)
        k = min(200, len(tr_keep))
        acc = [knn_top1(_run(s, tr_x), tr_y[tr_keep], _run(s, te_x), te_y[te_keep], k=k) for s in (fp32, int8)]
        cost.update(knn_top1_fp32=acc[0], knn_top1_int8=acc[1], knn_top1_change=acc[1] - acc[0])
    return cost


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each row's k nearest neighbours (cosine, itself excluded) shared by embeddings a and b."""
    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0

    def knn(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k - 1, axis=1)[:, :k]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(na.tolist(), nb.tolist())]))


# ------------------------------------------------------------------------------------------------ images
def sample_images(folder: str | Path | None, n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Up to n decodable images from `folder` (evenly spread over its sorted files), else n generated ones."""
    if folder is None:
        return generated_images(n, max(size, 64), seed)
    from byol.data import scan_folder
    from byol.images import load_rgb

    paths = scan_folder(folder)
    if not paths:
        raise ValueError(f"{folder}: no images found")
    pick = [paths[i] for i in np.linspace(0, len(paths) - 1, min(n * 2, len(paths))).astype(int)]
    out = []
    for p in dict.fromkeys(pick):
        try:
            out.append(load_rgb(p, min_side=size))
        except Exception as e:  # a bad file in the check folder is skipped, not fatal
            print(f"skipped {p}: {e}", file=sys.stderr)
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"{folder}: none of its images could be decoded")
    return out


def generated_images(n: int, side: int = 64, seed: int = 0) -> list[Image.Image]:
    """n varied RGB test images (textured backgrounds, random shapes): no download, no data set needed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(side * rng.uniform(1.0, 1.5)), int(side * rng.uniform(1.0, 1.5))
        low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        d = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            box = (int(x0), int(y0), int(x0 + rng.integers(8, w // 2 + 9)), int(y0 + rng.integers(8, h // 2 + 9)))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        out.append(img)
    return out


def _load_batch(paths: list[str], pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    from byol.images import load_rgb

    xs, keep = [], []
    for i, p in enumerate(paths):
        try:
            xs.append(pre(load_rgb(p, min_side=pre.resize)))
            keep.append(i)
        except Exception as e:  # reported and skipped
            print(f"skipped {p}: {e}", file=sys.stderr)
    return np.stack(xs), np.asarray(keep, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ runtime
def _session(model: bytes | str | Path) -> Any:  # an onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _run(session: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _quiet(fn: Callable[[], _T]) -> _T:
    """Run the exporter without its progress chatter on stdout (errors still raise)."""
    import contextlib
    import warnings

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()
