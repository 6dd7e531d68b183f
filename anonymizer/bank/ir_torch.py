"""An OpenVINO IR graph run by torch, so MobileStyleGAN can render on a CUDA GPU.

Why: OpenVINO runs its IR on CPUs and Intel GPUs; its NVIDIA plugin is not in the PyPI wheels (it is built
from source, openvino_contrib). The IR is read with OpenVINO's own Python API (op types, attributes and
constants); each op is then evaluated in order with its torch equivalent. Only the op types MobileStyleGAN's
two networks use are implemented; any other is refused when the graph is read, naming it. The batch size
is free: the graphs read it from their input's shape (ShapeOf), so N faces render in one pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonymizer.onnx_torch import gather, ints, reshape, unsqueeze


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _prelu(x, slope):
    if slope.numel() > 1 and x.dim() > 2:
        slope = slope.reshape(-1, *([1] * (x.dim() - 2)))
    return torch.where(x >= 0, x, x * slope)


def _broadcast(data, shape, mode):
    target = ints(shape)
    if mode == "bidirectional":
        target = list(torch.broadcast_shapes(tuple(data.shape), tuple(target)))
    elif mode != "numpy":
        raise ValueError(f"Broadcast mode {mode!r} not supported")
    return data.expand(*target)


def _split(data, axis, lengths):
    axis = _axis(int(axis), data.dim())
    sizes = ints(lengths)
    if -1 in sizes:
        sizes[sizes.index(-1)] = data.shape[axis] - sum(s for s in sizes if s != -1)
    return list(torch.split(data, sizes, dim=axis))


def _pads(attrs):
    begin, end = list(attrs["pads_begin"]), list(attrs["pads_end"])
    if attrs.get("auto_pad", "explicit") not in ("explicit", "notset"):
        raise ValueError(f"auto_pad {attrs['auto_pad']!r} not supported")
    if begin != end:
        raise ValueError(f"asymmetric pads {begin} / {end} not supported")
    return begin


def _conv(x, w, attrs):
    return F.conv2d(x, w, stride=attrs["strides"], padding=_pads(attrs), dilation=attrs["dilations"])


def _group_conv(x, w, attrs):  # w: G, Cout/G, Cin/G, kh, kw
    g = w.shape[0]
    return F.conv2d(x, w.reshape(-1, *w.shape[2:]), stride=attrs["strides"], padding=_pads(attrs),
                    dilation=attrs["dilations"], groups=g)


def _group_deconv(x, w, attrs):  # w: G, Cin/G, Cout/G, kh, kw
    g = w.shape[0]
    return F.conv_transpose2d(x, w.reshape(-1, *w.shape[2:]), stride=attrs["strides"], padding=_pads(attrs),
                              output_padding=attrs["output_padding"], dilation=attrs["dilations"], groups=g)


def _matmul(a, b, attrs):
    if attrs["transpose_a"]:
        a = a.transpose(-1, -2)
    if attrs["transpose_b"]:
        b = b.transpose(-1, -2)
    return a @ b


OPS = {
    "MatMul": lambda i, a: _matmul(i[0], i[1], a),
    "Add": lambda i, a: i[0] + i[1],
    "Multiply": lambda i, a: i[0] * i[1],
    "Power": lambda i, a: torch.pow(i[0], i[1]),
    "ReduceMean": lambda i, a: i[0].mean(dim=[_axis(x, i[0].dim()) for x in ints(i[1])], keepdim=a["keep_dims"]),
    "PRelu": lambda i, a: _prelu(i[0], i[1]),
    "ShapeOf": lambda i, a: torch.tensor(list(i[0].shape), dtype=torch.int64),
    "Gather": lambda i, a: gather(i[0], i[1], int(i[2])),
    "Unsqueeze": lambda i, a: unsqueeze(i[0], i[1]),
    "Squeeze": lambda i, a: i[0].squeeze([_axis(x, i[0].dim()) for x in ints(i[1])]),
    "Concat": lambda i, a: torch.cat([t.reshape(1) if t.dim() == 0 else t for t in i], dim=a["axis"]),
    "Reshape": lambda i, a: reshape(i[0], i[1], a["special_zero"]),
    "Broadcast": lambda i, a: _broadcast(i[0], i[1], a["mode"]),
    "Tile": lambda i, a: i[0].repeat(*ints(i[1])),
    "VariadicSplit": lambda i, a: _split(i[0], i[1], i[2]),
    "Convolution": lambda i, a: _conv(i[0], i[1], a),
    "GroupConvolution": lambda i, a: _group_conv(i[0], i[1], a),
    "GroupConvolutionBackpropData": lambda i, a: _group_deconv(i[0], i[1], a),
}


class IRModule(nn.Module):
    """One IR graph (`xml`, its `.bin` beside it) as a torch module of one input and one output."""

    def __init__(self, xml: str | Path) -> None:
        super().__init__()
        import openvino as ov

        model = ov.Core().read_model(str(xml))
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"{xml}: one input and one output expected")
        ids: dict[str, int] = {}
        self.steps: list[tuple[str, dict, list[tuple[int, int]]]] = []
        n_const = 0
        for op in model.get_ordered_ops():
            kind, name = op.get_type_name(), op.get_friendly_name()
            if name in ids:
                raise ValueError(f"{xml}: two ops named {name!r}: inputs cannot be told apart")
            ids[name] = len(self.steps)
            if kind == "Constant":
                data = np.array(op.get_data())
                t = torch.from_numpy(data.astype(np.float32) if data.dtype.kind == "f" else data.astype(np.int64))
                self.register_buffer(f"c{n_const}", t, persistent=False)
                self.steps.append(("Constant", {"buffer": f"c{n_const}"}, []))
                n_const += 1
                continue
            if kind not in OPS and kind not in ("Parameter", "Result"):
                raise ValueError(f"{xml}: op {name!r} of type {kind} is not supported")
            inputs = [(ids[i.get_source_output().get_node().get_friendly_name()], i.get_source_output().get_index())
                      for i in op.inputs()]
            self.steps.append((kind, dict(op.get_attributes()), inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: list = [None] * len(self.steps)
        out = None
        for n, (kind, attrs, inputs) in enumerate(self.steps):
            if kind == "Constant":
                values[n] = [getattr(self, attrs["buffer"])]
                continue
            if kind == "Parameter":
                values[n] = [x]
                continue
            args = [values[s][k] for s, k in inputs]
            if kind == "Result":
                out = args[0]
                continue
            if any(a.dtype == torch.int64 for a in args):
                args = [a.cpu() if a.dtype == torch.int64 else a for a in args]  # shape arithmetic stays on the CPU
            res = OPS[kind](args, attrs)
            values[n] = res if isinstance(res, list) else [res]
        return out
