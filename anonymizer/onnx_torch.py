"""An ONNX graph run by torch, so the detectors and recognizers run on a CUDA GPU where onnxruntime has no
CUDA provider.

Why: onnxruntime's GPU wheel is a separate 255 MB package tied to one CUDA major version; torch with CUDA is
what a GPU machine usually has. onnx2torch (the attackers' converter) refuses MTCNN's export (a Clip with one
bound) and imports torchvision. The graph is read with `onnx` (initializers become buffers) and each node is
evaluated in order with its torch equivalent. Only the op types of our networks (YuNet, RetinaFace's and
MTCNN's exports, CenterFace, MobileFaceNet) are implemented; any other is refused when the graph is read,
naming it. Integer tensors are shape arithmetic and stay on the CPU. `TorchSession` answers the calls the
networks make of an onnxruntime session, so a detector does not know which runtime it has.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def ints(t) -> list[int]:
    """A shape tensor (or list) as Python ints."""
    return [int(v) for v in (t.reshape(-1).tolist() if isinstance(t, torch.Tensor) else t)]


def _pads(a: dict, rank: int) -> list[int]:
    pads = list(a.get("pads", [0] * 2 * rank))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"auto_pad {a['auto_pad']!r} not supported")
    if pads[:rank] != pads[rank:]:
        raise ValueError(f"asymmetric pads {pads} not supported")
    return pads[:rank]


def _conv(i, a):
    return F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", 1), _pads(a, 2),
                    a.get("dilations", 1), a.get("group", 1))


def _deconv(i, a):
    return F.conv_transpose2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", 1), _pads(a, 2),
                              a.get("output_padding", 0), a.get("group", 1), a.get("dilations", 1))


def _maxpool(i, a):
    return F.max_pool2d(i[0], a["kernel_shape"], a.get("strides", 1), _pads(a, 2), a.get("dilations", 1),
                        ceil_mode=bool(a.get("ceil_mode", 0)))


def _resize(i, a):
    if a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode") != b"asymmetric" \
            or a.get("nearest_mode", b"round_prefer_floor") != b"floor":
        raise ValueError(f"Resize {a} not supported (nearest, asymmetric, floor only)")
    x = i[0]
    if len(i) > 3 and i[3] is not None and i[3].numel():
        size = ints(i[3])[2:]
    else:
        scales = i[2].reshape(-1).tolist()[2:]
        size = [int(d * s) for d, s in zip(x.shape[2:], scales)]
    return F.interpolate(x, size=size, mode="nearest")


def gather(data, indices, axis: int):
    """ONNX's and OpenVINO's Gather: `indices` (any shape, negative from the end) along `axis`."""
    axis = axis + data.dim() if axis < 0 else axis
    idx = indices.long().to(data.device)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))


def reshape(data, shape, copy_zero: bool):
    """Reshape to a shape tensor; with `copy_zero` a 0 keeps that dimension (ONNX without allowzero, OpenVINO's
    special_zero)."""
    dims = ints(shape)
    if copy_zero:
        dims = [data.shape[k] if d == 0 else d for k, d in enumerate(dims)]
    return data.reshape(dims)


def _slice(i):
    data, starts, ends = i[0], ints(i[1]), ints(i[2])
    axes = ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[ax] = slice(s, min(e, data.shape[ax]), st)
    return data[tuple(index)]


def unsqueeze(data, axes):
    """Insert dimensions at `axes` (a shape tensor or list; negative ones count in the output's rank)."""
    axes = ints(axes)
    rank = data.dim() + len(axes)
    for ax in sorted(a + rank if a < 0 else a for a in axes):
        data = data.unsqueeze(ax)
    return data


def _batchnorm(i, a):
    return F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5))


def _clip(i, a):
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    return torch.clamp(i[0], None if lo is None else float(lo), None if hi is None else float(hi))


def _gemm(i, a):
    x, w = i[0], i[1]
    x = x.transpose(0, 1) if a.get("transA", 0) else x
    w = w.transpose(0, 1) if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * i[2] if len(i) > 2 and i[2] is not None else y


_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}

OPS = {
    "Conv": _conv,
    "ConvTranspose": _deconv,
    "MaxPool": _maxpool,
    "Resize": _resize,
    "BatchNormalization": _batchnorm,
    "Relu": lambda i, a: F.relu(i[0]),
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Clip": _clip,
    "Softmax": lambda i, a: torch.softmax(i[0], a.get("axis", -1)),
    "Add": lambda i, a: i[0] + i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Gemm": _gemm,
    "Concat": lambda i, a: torch.cat(i, a["axis"]),
    "Transpose": lambda i, a: i[0].permute(*a["perm"]),
    "Reshape": lambda i, a: reshape(i[0], i[1], not a.get("allowzero", 0)),
    "Shape": lambda i, a: torch.tensor(list(i[0].shape)[a.get("start", 0):a.get("end")], dtype=torch.int64),
    "Gather": lambda i, a: gather(i[0], i[1], a.get("axis", 0)),
    "Unsqueeze": lambda i, a: unsqueeze(i[0], i[1] if len(i) > 1 else a["axes"]),
    "Slice": lambda i, a: _slice(i),
    "Cast": lambda i, a: i[0].to(_DTYPES[a["to"]]),
}


class OnnxModule(nn.Module):
    """An ONNX graph (its serialized bytes) as a torch module: positional inputs in the graph's order, a list
    of outputs in the graph's order."""

    def __init__(self, model: bytes, owner: str) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        graph = onnx.load_from_string(model).graph
        self._consts: dict[str, str] = {}  # float constants: buffers, moved with the module
        self._ints: dict[str, torch.Tensor] = {}  # integer constants: on the CPU
        for k, init in enumerate(graph.initializer):
            self._add_const(init.name, numpy_helper.to_array(init), k)
        self.inputs = [i.name for i in graph.input if i.name not in self._consts and i.name not in self._ints]
        self.outputs = [o.name for o in graph.output]
        self.steps: list[tuple[str, dict, list[str], list[str]]] = []
        for n in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Constant":
                k = len(self._consts) + len(self._ints)
                self._add_const(n.output[0], numpy_helper.to_array(attrs["value"]), k)
                continue
            if n.op_type not in OPS:
                raise ValueError(f"{owner}: op {n.name!r} of type {n.op_type} is not supported by the torch runtime")
            self.steps.append((n.op_type, attrs, list(n.input), list(n.output)))

    def _add_const(self, name: str, value: np.ndarray, k: int) -> None:
        if value.dtype.kind != "f":  # shape arithmetic: kept off the module's device, so no call waits on a copy
            self._ints[name] = torch.from_numpy(value.astype(np.int64))
            return
        self.register_buffer(f"c{k}", torch.from_numpy(value.astype(np.float32)), persistent=False)
        self._consts[name] = f"c{k}"

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        values = {name: getattr(self, buf) for name, buf in self._consts.items()}
        values.update(self._ints)
        values.update(zip(self.inputs, xs))
        values[""] = None  # an optional input left out
        for kind, attrs, ins, outs in self.steps:
            res = OPS[kind]([values[n] for n in ins], attrs)
            values.update(zip(outs, res if isinstance(res, (list, tuple)) else [res]))
        return [values[n] for n in self.outputs]


class TorchSession:
    """The part of an onnxruntime InferenceSession our networks call (run, get_inputs, get_outputs,
    get_providers), over an `OnnxModule` on a torch device."""

    def __init__(self, model: bytes, device: str, owner: str) -> None:
        self.device = torch.device(device)
        self._module = OnnxModule(model, owner).eval().to(self.device)

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self._module.inputs]

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self._module.outputs]

    def get_providers(self) -> list[str]:
        return [f"torch ({self.device})"]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            xs = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self._module.inputs]
            out = dict(zip(self._module.outputs, self._module(*xs)))
            return [out[n].float().cpu().numpy() for n in (names or self._module.outputs)]
