"""The torch definitions of networks whose weights come as torch state dicts (RetinaFace, MTCNN), used only
to write their ONNX graphs: detection runs them on onnxruntime, so a worker never imports torch for them.

Layer names mirror the state dicts' keys; each network follows its origin exactly, since the weights only
make sense with that layout (biubug6/Pytorch_Retinaface; timesler/facenet-pytorch's MTCNN).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# --- RetinaFace MobileNet-0.25 ------------------------------------------------------------------------


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def _conv_bn_no_relu(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def _conv_bn1x1(inp: int, oup: int, leaky: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True))


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(leaky, inplace=True),
    )


class _MobileNetV1Body(nn.Module):
    """MobileNet-0.25 without its classifier: only stages 1-3 feed the FPN (and exist in the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class _FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = _conv_bn1x1(in_channels[0], out, leaky)
        self.output2 = _conv_bn1x1(in_channels[1], out, leaky)
        self.output3 = _conv_bn1x1(in_channels[2], out, leaky)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class _SSH(nn.Module):
    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn_no_relu(inp, out // 2)
        self.conv5X5_1 = _conv_bn(inp, out // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn_no_relu(out // 4, out // 4)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn_no_relu(out // 4, out // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class _Head(nn.Module):
    """A 1x1 conv whose output is laid out (batch, H*W*anchors, k), the order the priors use."""

    def __init__(self, inp: int, k: int, anchors: int = 2) -> None:
        super().__init__()
        self.k = k
        self.conv1x1 = nn.Conv2d(inp, anchors * k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.k)


class RetinaFaceNet(nn.Module):
    """Outputs (box deltas, face probability, landmark deltas) per prior, for a BGR-minus-mean batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _MobileNetV1Body()
        self.fpn = _FPN([64, 128, 256], 64)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(64, 64), _SSH(64, 64), _SSH(64, 64)
        self.ClassHead = nn.ModuleList([_Head(64, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(64, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(64, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1)[..., 1], ldm


# --- MTCNN's P-, R- and O-Net -------------------------------------------------------------------------


class _PReLU(nn.PReLU):
    """PReLU written as relu(x) + a * min(x, 0): the same values bit for bit (one term is always 0), but
    onnxruntime runs these elementwise ops about twice as fast as its PRelu kernel, which took a third to
    a half of R- and O-Net's time (docs/benchmarks.md "Where the time goes")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.weight.view(1, -1, *([1] * (x.dim() - 2)))
        return F.relu(x) + slope * x.clamp(max=0)


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), _PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), _PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), _PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), _PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), _PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), _PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), _PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), _PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), _PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), _PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), _PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), _PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


# --- to ONNX ---------------------------------------------------------------------------------------------

NETS = {"retinaface": RetinaFaceNet, "mtcnn_pnet": PNet, "mtcnn_rnet": RNet, "mtcnn_onet": ONet}
# Output names, and the input size each graph is traced at.
OUTPUTS = {"retinaface": ("loc", "conf", "ldm"), "mtcnn_pnet": ("reg", "prob"), "mtcnn_rnet": ("reg", "prob"),
           "mtcnn_onet": ("reg", "points", "prob")}
TRACE_SIZE = {"retinaface": 64, "mtcnn_pnet": 12, "mtcnn_rnet": 24, "mtcnn_onet": 48}


def load(name: str, path: Path) -> nn.Module:
    """`name`'s network with the weights at `path` (a truncated or foreign file: an error naming it)."""
    net = NETS[name]()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    except Exception as exc:
        raise ValueError(f"{name}: cannot load {path}: {exc}") from exc
    return net.eval().requires_grad_(False)


def to_onnx(name: str, path: Path) -> bytes:
    """`name`'s network with the weights at `path` as an ONNX graph whose batch is free, and its height and
    width where the network takes any size (RetinaFace, P-Net). torch's TorchScript exporter: these plain
    convolutional networks need nothing of the newer one (which also needs onnxscript)."""
    size = TRACE_SIZE[name]
    free = {0: "n", 2: "h", 3: "w"} if name in ("retinaface", "mtcnn_pnet") else {0: "n"}  # R/O-Net: fixed crops
    dynamic = {"input": free, **{o: {0: "n"} for o in OUTPUTS[name]}}
    if name == "retinaface":  # one row per prior: as many as the input's size gives
        dynamic.update({o: {0: "n", 1: "priors"} for o in OUTPUTS[name]})
    elif name == "mtcnn_pnet":  # one cell per 2 px
        dynamic.update({o: free for o in OUTPUTS[name]})
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(load(name, path), (torch.zeros(1, 3, size, size),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=list(OUTPUTS[name]), dynamic_axes=dynamic)
    return buf.getvalue()
