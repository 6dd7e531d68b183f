"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) run by torch.

The same weights, read from dlib's own file, in a torch module: faces go through the network in batches,
without holding the GIL, on a GPU when there is one. dlib's `compute_face_descriptor` takes one face at a
time on one thread (~80 ms per face on this project's CPUs); this module takes ~7 ms per face in a batch,
and its descriptors equal dlib's to float rounding (tests/test_dlib_resnet_torch.py).

The file is dlib's binary serialization of `anet_type` (dlib's dnn_face_recognition_ex.cpp): layers from
the input to the output, each a name string followed by its fields; tensors are a version, four dimensions
and raw little-endian float32. Only what the network needs is read: each `con_4` (filters and bias, stride,
padding), each `affine_` (per-channel scale and shift, folded into the convolution before it), where the
residual blocks pool their shortcut (`avg_pool_2`), and the final `fc_2` (no bias).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHIP_SIZE = 150  # input_rgb_image_sized<150>; chips cut by dlib.get_face_chip(img, shape, 150, 0.25)
CHIP_PADDING = 0.25


class DlibModelFormatError(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def int(self) -> int:
        """dlib's packed integer: a byte with the length (low nibble) and sign (0x80), then little-endian bytes."""
        head = self.data[self.pos]
        n, neg = head & 0x0F, head & 0x80
        v = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if neg else v

    def float(self) -> float:
        """dlib's portable float: a packed mantissa and a packed exponent."""
        m = self.int()
        return m * 2.0 ** self.int()

    def find(self, *names: bytes) -> bytes | None:
        """Advance past the next of the serialized strings `names` (length-prefixed); None at the end.
        Tensors are skipped whole, so the next layer's name is never far: only a window is searched."""
        end = self.pos + 65536
        hits = [(self.data.find(bytes([1, len(n)]) + n, self.pos, end), n) for n in names]
        hits = [(i, n) for i, n in hits if i >= 0]
        if not hits:
            return None
        i, n = min(hits)
        self.pos = i + 2 + len(n)
        return n

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibModelFormatError(f"{self.path}: tensor version {version}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        n = int(np.prod(shape))
        if self.pos + 4 * n > len(self.data):
            raise DlibModelFormatError(f"{self.path}: truncated (a tensor of {shape} runs past the end)")
        out = np.frombuffer(self.data, "<f4", n, self.pos).reshape(shape).copy()
        self.pos += 4 * n
        return out


def read_dlib_resnet(path: str | Path) -> dict:
    """The network's parameters from dlib's file: {'mean': the input's per-channel mean, 'convs': [w, b,
    stride, padding] with the affine layers folded in, 'pooled': the number of convolutions read when each
    pooled shortcut came (the block ending there pools), 'fc': 256 x 128}."""
    data = Path(path).read_bytes()
    r = _Reader(data, str(path))
    if r.find(b"input_rgb_image_sized") is None:
        raise DlibModelFormatError(f"{path}: not a dlib face-recognition network (no input_rgb_image_sized)")
    mean = [r.float() for _ in range(3)]
    convs, pooled, fc = [], [], None
    while (name := r.find(b"con_4", b"affine_", b"avg_pool_2", b"fc_2")) is not None:
        if name == b"con_4":
            params = r.tensor().reshape(-1)
            k, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
            cin = (params.size - k) // (k * nr * nc)
            w = params[:k * cin * nr * nc].reshape(k, cin, nr, nc)
            convs.append([w, params[k * cin * nr * nc:].copy(), (sy, sx), (py, px)])
        elif name == b"affine_":
            params = r.tensor().reshape(-1)
            gamma, beta = np.split(params, 2)
            w, b = convs[-1][0], convs[-1][1]
            convs[-1][0] = w * gamma[:, None, None, None]
            convs[-1][1] = b * gamma + beta
        elif name == b"avg_pool_2":
            nr, nc = r.int(), r.int()
            if nr:  # avg_pool_everything is serialized with zero window
                pooled.append(len(convs))
        else:
            r.int(), r.int()  # num_outputs, num_inputs
            fc = r.tensor().reshape(256, 128)
    if len(convs) != 29 or fc is None:
        raise DlibModelFormatError(f"{path}: {len(convs)} convolutions and {'a' if fc is not None else 'no'} "
                                   "final layer; dlib's face-recognition ResNet has 29 and one")
    return {"mean": mean, "convs": convs, "pooled": pooled, "fc": fc}


def build_dlib_resnet(path: str | Path):
    """A torch module: N x 150 x 150 x 3 RGB uint8 chips (as a float tensor N x 3 x 150 x 150 in 0..255)
    -> N x 128 descriptors, dlib's."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    p = read_dlib_resnet(path)

    def conv(c) -> nn.Conv2d:
        w, b, stride, padding = c
        m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], stride, padding)
        m.weight.data = torch.from_numpy(np.ascontiguousarray(w))
        m.bias.data = torch.from_numpy(np.ascontiguousarray(b))
        return m

    def add(a, b):
        """dlib's add_prev: the sum over the larger of both shapes, each operand zero outside its own."""
        c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

        def grown(t):  # zeros after its own channels, rows and columns (one Pad in an ONNX export)
            return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

        return grown(a) + grown(b)

    class Block(nn.Module):
        def __init__(self, c1, c2, pooled: bool) -> None:
            super().__init__()
            self.c1, self.c2, self.pooled = conv(c1), conv(c2), pooled

        def forward(self, x):
            y = self.c2(F.relu(self.c1(x)))
            return F.relu(add(y, F.avg_pool2d(x, 2, 2) if self.pooled else x))

    class DlibResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(p["mean"], dtype=torch.float32).view(1, 3, 1, 1))
            self.stem = conv(p["convs"][0])
            # a block is pooled when its avg_pool_2 follows its two convolutions in the file
            self.blocks = nn.Sequential(*(Block(p["convs"][i], p["convs"][i + 1], (i + 2) in p["pooled"])
                                          for i in range(1, 29, 2)))
            self.fc = nn.Parameter(torch.from_numpy(p["fc"]))

        def forward(self, x):
            x = (x - self.mean) / 256.0
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
            x = self.blocks(x).mean(dim=(2, 3))
            return x @ self.fc

    # channels-last: torch's CPU convolutions run this network ~15 % faster that way
    return DlibResNet().eval().to(memory_format=torch.channels_last)


def onnx_export(path: str | Path) -> bytes:
    """The network as float32 ONNX with a free batch (input `x`: N x 3 x 150 x 150, 0..255): what its int8
    copy (anonymizer.int8) is made from."""
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    net = build_dlib_resnet(path).to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():  # the tracer notes that the shapes `add` pads to are fixed: they are
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, CHIP_SIZE, CHIP_SIZE), buf, input_names=["x"],
                          output_names=["descriptor"], dynamic_axes={"x": {0: "n"}, "descriptor": {0: "n"}},
                          opset_version=13, dynamo=False)
    return buf.getvalue()
