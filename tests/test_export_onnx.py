"""ONNX export round trips (R-18-D8, R-50-D8) with ONNX Runtime on CPU, at small input sizes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import randomize

from export.check import ExportCheckError, check_export, compare, sample_batch
from export.engines.metadata import ExportMetadata, MetadataError, read_onnx
from export.onnx_export import check_shapes, export_onnx, main
from export.engines.ort_session import create_session
from model import DEFAULT_MODEL, build_model, get_config, save_checkpoint

R50 = "deeplabv3plus_r50-d8_4xb4-80k_potsdam-512x512"
# What the graph may contain: all in the TensorRT 10 ONNX parser's supported-operator list.
TRT_PARSER_OPS = {"Conv", "Relu", "MaxPool", "Add", "ReduceMean", "Resize", "Shape", "Concat", "Squeeze", "Div", "Reshape"}
HW = (64, 96)


def random_net(name: str, seed: int = 0) -> torch.nn.Module:
    net = build_model(get_config(name), with_auxiliary=False)
    net.load_state_dict(randomize(net.state_dict(), seed))
    net.meta = {"source": f"random seed {seed}"}
    return net.eval()


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run(path, x: torch.Tensor) -> np.ndarray:
    session = create_session(path)
    return session.run(None, {"input": x.numpy()})[0]


@pytest.fixture(scope="module")
def r18():
    return random_net(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def dynamic_logits(r18, tmp_path_factory):
    """Dynamic batch and size, logits out: the default `python -m export.onnx_export` graph."""
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    export_onnx(r18, path, trace_hw=HW)
    return path


@pytest.fixture(scope="module")
def fixed_labels(r18, tmp_path_factory):
    """Through the CLI, from a checkpoint: fixed 64x96, argmax folded in."""
    tmp = tmp_path_factory.mktemp("cli")
    ckpt = save_checkpoint(r18, tmp / "r18.pth", meta={"source": "random seed 0"})
    out = tmp / "r18_labels.onnx"
    assert main(["--model", str(ckpt), "--out", str(out), "--shape", "64x96", "--with-argmax"]) == 0
    return out


def test_r18_round_trip_matches_torch(r18, dynamic_logits):
    inputs = [sample_batch(r18.config, 2, HW), sample_batch(r18.config, 1, (37, 51), seed=1)]
    for result in compare(r18, dynamic_logits, inputs):
        assert result.max_logit_diff < 1e-3, result
        assert result.pixel_agreement >= 0.999, result


def test_r50_round_trip_matches_torch(tmp_path):
    net = random_net(R50, seed=3)
    path = tmp_path / "r50.onnx"
    export_onnx(net, path, shape=HW)
    (result,) = check_export(net, path, [sample_batch(net.config, 2, HW)])
    assert result.max_logit_diff < 1e-3 and result.pixel_agreement >= 0.999
    assert dims(onnx.load(str(path)).graph.output[0]) == ["batch", 6, *HW]


def test_dynamic_batch_1_to_4_equals_batch_1(r18, dynamic_logits):
    x = sample_batch(r18.config, 4, HW, seed=2)
    singles = [run(dynamic_logits, x[i : i + 1]) for i in range(4)]
    for n in range(1, 5):
        batched = run(dynamic_logits, x[:n])
        assert batched.shape == (n, 11, *HW)
        np.testing.assert_allclose(batched, np.concatenate(singles[:n]), atol=1e-5)


def test_dynamic_graph_is_clean_for_tensorrt(dynamic_logits):
    proto = onnx.load(str(dynamic_logits))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(proto.graph.output[0]) == ["batch", 11, "height", "width"]
    ops = [n.op_type for n in proto.graph.node]
    assert {n.domain for n in proto.graph.node} <= {""}, "no custom-domain ops: TensorRT's parser lacks them"
    assert set(ops) <= TRT_PARSER_OPS, set(ops) - TRT_PARSER_OPS
    assert "BatchNormalization" not in ops, "BN should be folded into the convolutions"
    assert ops.count("Resize") == 3  # image pool, decoder, final: nothing else upsampling


def test_argmax_graph_outputs_int32_labels(r18, fixed_labels):
    proto = onnx.load(str(fixed_labels))
    (out,) = proto.graph.output
    assert out.name == "labels" and out.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert {n.op_type for n in proto.graph.node} <= TRT_PARSER_OPS | {"ArgMax", "Cast"}
    assert dims(out) == ["batch", *HW]
    assert dims(proto.graph.input[0]) == ["batch", 3, *HW]
    x = sample_batch(r18.config, 3, HW, seed=4)
    labels = run(fixed_labels, x)
    with torch.inference_mode():
        expected = r18(x).argmax(1).numpy()
    assert labels.dtype == np.int32
    assert (labels == expected).mean() >= 0.999


def test_metadata_round_trip(r18, fixed_labels, dynamic_logits):
    assert read_onnx(dynamic_logits) == ExportMetadata.from_model(r18, "logits")
    meta = read_onnx(fixed_labels)
    assert meta.output == "labels" and meta.config == DEFAULT_MODEL
    assert meta.provenance["source"] == "random seed 0"
    props = {p.key for p in onnx.load(str(fixed_labels), load_external_data=False).metadata_props}
    assert {"config", "classes", "palette", "mean", "std", "input_layout", "output"} <= props
    cfg = meta.model_config()
    assert cfg.dataset.classes == r18.config.dataset.classes and cfg.mean == r18.config.mean


def test_metadata_missing_is_a_clear_error(tmp_path):
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(MetadataError, match="no deeplab-serve metadata"):
        read_onnx(tmp_path / "foreign.onnx")


def test_check_fails_when_graph_disagrees(dynamic_logits):
    other = random_net(DEFAULT_MODEL, seed=7)
    with pytest.raises(ExportCheckError, match="disagrees with the PyTorch model"):
        check_export(other, dynamic_logits, [sample_batch(other.config, 1, HW)])


def test_check_shapes_cover_each_dynamic_axis():
    assert check_shapes(4, (64, 96), (64, 96)) == [(4, 64, 96)]
    assert check_shapes(None, (64, 96), (64, 96)) == [(2, 64, 96), (3, 64, 96)]
    assert check_shapes(None, None, (64, 96)) == [(2, 64, 96), (1, 37, 51)]
    assert check_shapes(2, None, (64, 96)) == [(2, 64, 96), (2, 37, 51)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "m.onnx", "--shape", "64"], "expected HEIGHTxWIDTH"),
        (["--out", "m.onnx", "--batch", "0"], "'dynamic' or a positive integer"),
        (["--out", "m.onnx", "--opset", "17"], "opset must be an integer >= 18"),
        (["--out", "m.onnx", "--opset", "999"], "--opset 999 is newer than the installed onnx supports"),
        (["--out", "m.txt"], "--out must end in .onnx"),
        (["--out", "m.onnx", "--shape", "64x96", "--dynamic-shape"], "not allowed with argument"),
        (["--out", "m.onnx", "--shape", "64x96", "--sample-shape", "32x32"], "--sample-shape only applies"),
        (["--shape", "64x96"], "required: --out"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", "no-such-model", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "neither a file nor a known config name" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
