#!/usr/bin/env python3
"""Builds the models and demo frames printvigil ships, with the I/O signature of Obico's
production detector (input `input` [1,3,416,416] float32 RGB 0..1; outputs `boxes`
[1,845,1,4] x1,y1,x2,y2 normalised and `confs` [1,845,1]).

  models/generate.py tiny   models/tiny.onnx      fast tests: a 1x1 conv over 32x32 means
  models/generate.py demo   models/demo.onnx      the DEMO detector (see models/README.md)
  models/generate.py full   models/full.onnx      same architecture and cost as Obico's
                                                  (YOLOv2 variant, ~50.6 M params, ~200 MB),
                                                  seeded random weights: for benchmarks only
  models/generate.py frames models/frames         the bundled demo frames
  models/generate.py mismatch OUT                 a model with another signature (tests)

Needs numpy and onnx (and OpenCV for frames): tests/peers/requirements-tools.txt.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GRID = 13
ANCHORS = [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071)]
NA = len(ANCHORS)
OPSET = 17


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, array, base="c"):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, base=None, **attrs):
        out = self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def model(self, outputs):
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 416, 416])
        outs = [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, GRID * GRID * NA, 1, 4]),
            helper.make_tensor_value_info("confs", TensorProto.FLOAT, [1, GRID * GRID * NA, 1]),
        ]
        self.nodes.append(helper.make_node("Identity", [outputs[0]], ["boxes"]))
        self.nodes.append(helper.make_node("Identity", [outputs[1]], ["confs"]))
        g = helper.make_graph(self.nodes, "printvigil", [inp], outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="printvigil")
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=False)
        return m


def region_decode(g, x):
    """x: [1, 30, 13, 13] -> (boxes [1,845,1,4], confs [1,845,1]), anchor-major order."""
    r = g.op("Reshape", [x, g.const(np.array([1, NA, 6, GRID, GRID], np.int64))])
    parts = [g.op("Slice", [r, g.const(np.array([k], np.int64)), g.const(np.array([k + 1], np.int64)),
                            g.const(np.array([2], np.int64))]) for k in range(5)]
    tx, ty, tw, th, to = [g.op("Squeeze", [p, g.const(np.array([2], np.int64))]) for p in parts]
    col = np.tile(np.arange(GRID, dtype=np.float32), (GRID, 1)).reshape(1, 1, GRID, GRID)
    row = col.transpose(0, 1, 3, 2).copy()
    aw = np.array([a[0] for a in ANCHORS], np.float32).reshape(1, NA, 1, 1) / GRID
    ah = np.array([a[1] for a in ANCHORS], np.float32).reshape(1, NA, 1, 1) / GRID
    inv = g.const(np.array(1.0 / GRID, np.float32))
    cx = g.op("Mul", [g.op("Add", [g.op("Sigmoid", [tx]), g.const(col)]), inv])
    cy = g.op("Mul", [g.op("Add", [g.op("Sigmoid", [ty]), g.const(row)]), inv])
    half = g.const(np.array(0.5, np.float32))
    hw = g.op("Mul", [g.op("Mul", [g.op("Exp", [tw]), g.const(aw)]), half])
    hh = g.op("Mul", [g.op("Mul", [g.op("Exp", [th]), g.const(ah)]), half])
    flat = g.const(np.array([1, GRID * GRID * NA, 1, 1], np.int64))
    corners = [g.op("Reshape", [g.op(o, [c, h]), flat]) for o, c, h in
               [("Sub", cx, hw), ("Sub", cy, hh), ("Add", cx, hw), ("Add", cy, hh)]]
    boxes = g.op("Concat", corners, axis=3)
    confs = g.op("Reshape", [g.op("Sigmoid", [to]), g.const(np.array([1, GRID * GRID * NA, 1], np.int64))])
    return boxes, confs


def head_from(g, score, w_conf, b_conf, size_cells):
    """A 1-channel per-cell score map -> the 30-channel region tensor: anchor 0 carries the
    confidence logit `w_conf*score + b_conf` and a box `size_cells` wide; other anchors are off."""
    w = np.zeros((NA * 6, 1, 1, 1), np.float32)
    b = np.zeros(NA * 6, np.float32)
    for a in range(NA):
        b[a * 6 + 4] = -12.0  # anchors 1..4: confidence ~6e-6, always filtered
    w[4, 0, 0, 0] = w_conf
    b[4] = b_conf
    b[2] = np.log(size_cells / ANCHORS[0][0])
    b[3] = np.log(size_cells / ANCHORS[0][1])
    return g.op("Conv", [score, g.const(w), g.const(b)], kernel_shape=[1, 1])


def tiny():
    """Mean colour of each 32x32 cell -> a fixed linear map: cheap, deterministic, and its
    confidences vary with the picture (bright red cells score high)."""
    g = Graph()
    pooled = g.op("AveragePool", ["input"], kernel_shape=[32, 32], strides=[32, 32])
    w = np.array([[[[4.0]], [[-3.0]], [[-3.0]]]], np.float32)  # red minus the rest
    score = g.op("Conv", [pooled, g.const(w), g.const(np.zeros(1, np.float32))], kernel_shape=[1, 1])
    return g.model(region_decode(g, head_from(g, score, 4.0, -3.0, 1.2)))


def demo():
    """The demo detector: it looks for thin strands of magenta filament. Per pixel, a
    magenta mask (red and blue both well above green); its edge density per 32x32 cell
    (tangled strands have many edges, a solid printed part few) drives the confidence."""
    g = Graph()
    diff_w = np.array([[[[1.0]], [[-1.0]], [[0.0]]], [[[0.0]], [[-1.0]], [[1.0]]]], np.float32)
    diffs = g.op("Conv", ["input", g.const(diff_w), g.const(np.array([-0.15, -0.15], np.float32))],
                 kernel_shape=[1, 1])
    m = g.op("ReduceMin", [g.op("Relu", [diffs])], axes=[1], keepdims=1)
    mask = g.op("Clip", [g.op("Mul", [m, g.const(np.array(6.0, np.float32))]),
                         g.const(np.array(0.0, np.float32)), g.const(np.array(1.0, np.float32))])
    edge_w = np.zeros((2, 1, 2, 2), np.float32)
    edge_w[0, 0, 0, 0], edge_w[0, 0, 0, 1] = -1.0, 1.0  # horizontal step
    edge_w[1, 0, 0, 0], edge_w[1, 0, 1, 0] = -1.0, 1.0  # vertical step
    edges = g.op("Conv", [mask, g.const(edge_w), g.const(np.zeros(2, np.float32))],
                 kernel_shape=[2, 2], pads=[0, 0, 1, 1])
    energy = g.op("ReduceSum", [g.op("Abs", [edges]), g.const(np.array([1], np.int64))], keepdims=1)
    density = g.op("AveragePool", [energy], kernel_shape=[32, 32], strides=[32, 32])
    return g.model(region_decode(g, head_from(g, density, 20.0, -5.4, 1.6)))


def mismatch():
    """A model that is NOT the detector (for tests): 320x320 input, outputs renamed."""
    g = Graph()
    pooled = g.op("AveragePool", ["input"], kernel_shape=[32, 32], strides=[32, 32])
    y = g.op("ReduceMean", [pooled], axes=[1], keepdims=1)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 10, 10])
    g.nodes.append(helper.make_node("Identity", [y], ["scores"]))
    graph = helper.make_graph(g.nodes, "mismatch", [inp], [out], g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def full(seed=5):
    """Obico's architecture (spec layer table) with seeded random weights."""
    rng = np.random.default_rng(seed)
    g = Graph()

    def conv(x, cin, cout, k, bn=True):
        std = np.sqrt(2.0 / (cin * k * k)) * 0.7
        w = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) * std).astype(np.float32)
        if not bn:
            b = (rng.standard_normal(cout, dtype=np.float32) * 0.1).astype(np.float32)
            return g.op("Conv", [x, g.const(w, "w"), g.const(b, "b")], kernel_shape=[k, k], pads=[k // 2] * 4)
        y = g.op("Conv", [x, g.const(w, "w")], kernel_shape=[k, k], pads=[k // 2] * 4)
        scale = (1.0 + 0.05 * rng.standard_normal(cout)).astype(np.float32)
        bias = (0.05 * rng.standard_normal(cout)).astype(np.float32)
        mean = (0.05 * rng.standard_normal(cout)).astype(np.float32)
        var = (1.0 + 0.1 * rng.random(cout)).astype(np.float32)
        y = g.op("BatchNormalization", [y] + [g.const(a, n) for a, n in
                                             [(scale, "s"), (bias, "bb"), (mean, "m"), (var, "v")]], epsilon=1e-5)
        return g.op("LeakyRelu", [y], alpha=0.1)

    def pool(x):
        return g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    x = conv("input", 3, 32, 3)
    x = pool(x)
    x = conv(x, 32, 64, 3)
    x = pool(x)
    x = conv(conv(conv(x, 64, 128, 3), 128, 64, 1), 64, 128, 3)
    x = pool(x)
    x = conv(conv(conv(x, 128, 256, 3), 256, 128, 1), 128, 256, 3)
    x = pool(x)
    x = conv(x, 256, 512, 3)
    x = conv(x, 512, 256, 1)
    x = conv(x, 256, 512, 3)
    x = conv(x, 512, 256, 1)
    l16 = conv(x, 256, 512, 3)
    x = pool(l16)
    x = conv(x, 512, 1024, 3)
    x = conv(x, 1024, 512, 1)
    x = conv(x, 512, 1024, 3)
    x = conv(x, 1024, 512, 1)
    x = conv(x, 512, 1024, 3)
    x = conv(conv(x, 1024, 1024, 3), 1024, 1024, 3)
    r = conv(l16, 512, 64, 1)
    r = g.op("SpaceToDepth", [r], blocksize=2)  # reorg: channel (dy*2+dx)*64 + c
    x = g.op("Concat", [r, x], axis=1)
    x = conv(x, 1280, 1024, 3)
    x = conv(x, 1024, NA * 6, 1, bn=False)
    return g.model(region_decode(g, x))


def frames(out_dir):
    """Demo frames: a print bed with a part growing (healthy), then magenta strands
    spreading (failing). 480x360 JPEGs, a few hundred KB in all."""
    import cv2

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(7)
    w, h = 480, 360
    base = np.full((h, w, 3), (58, 60, 64), np.uint8)  # BGR: dark bed
    for y in range(0, h, 24):
        cv2.line(base, (0, y), (w, y), (70, 72, 76), 1)
    strands = []
    for _ in range(120):
        x0, y0 = rng.uniform(170, 310), rng.uniform(170, 290)
        pts = [(x0, y0)]
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(10):
            ang += rng.normal(0, 0.9)
            x0, y0 = x0 + 9 * np.cos(ang), y0 + 9 * np.sin(ang)
            pts.append((x0, y0))
        strands.append(np.array(pts, np.int32))
    names = []
    for i in range(10):
        img = base.copy()
        height = 20 + min(i, 5) * 14
        top = 290 - height
        cv2.rectangle(img, (200, top), (280, 290), (150, 40, 190), -1)  # BGR magenta part
        for y in range(top + 3, 290, 4):
            cv2.line(img, (200, y), (280, y), (135, 34, 172), 1)  # layer lines
        failing = max(0, i - 5)
        for s in strands[: failing * 30]:
            cv2.polylines(img, [s], False, (165, 50, 205), 2, cv2.LINE_AA)
        noise = rng.normal(0, 3, img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        name = f"{i:02d}-{'healthy' if failing == 0 else 'failing'}.jpg"
        cv2.imwrite(os.path.join(out_dir, name), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        names.append(name)
    return names


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("tiny", "demo", "full", "frames", "mismatch"):
        sys.exit(__doc__)
    kind, out = sys.argv[1:]
    if kind == "frames":
        print("\n".join(frames(out)))
        return
    model = {"tiny": tiny, "demo": demo, "full": full, "mismatch": mismatch}[kind]()
    tmp = out + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, out)
    print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
