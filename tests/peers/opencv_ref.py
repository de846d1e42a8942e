"""OpenCV reference for printvigil's pre-processing tests.

Reads jobs from stdin, one per line, and writes results where each job says:
  resize SRC W H C DW DH OUT   raw 8-bit HWC image -> cv2.resize(INTER_LINEAR) -> raw
  decode JPEG OUT              cv2.imdecode (BGR) -> RGB raw, header "W H\n"
  decode_resize JPEG DW DH OUT cv2.imdecode -> cv2.resize -> RGB raw (the server's path)
  frame W H SEED JPEG DW DH OUT a camera-like test frame (gradients plus seeded noise),
                               encoded as a JPEG (quality 80), then decode_resize of it
"""
import sys

import cv2
import numpy as np

for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    if parts[0] == "resize":
        src, w, h, c, dw, dh, out = parts[1:]
        img = np.fromfile(src, dtype=np.uint8).reshape(int(h), int(w), int(c))
        res = cv2.resize(img, (int(dw), int(dh)), interpolation=cv2.INTER_LINEAR)
        np.ascontiguousarray(res).tofile(out)
    elif parts[0] == "decode":
        src, out = parts[1:]
        img = cv2.imdecode(np.fromfile(src, dtype=np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        with open(out, "wb") as f:
            f.write(f"{rgb.shape[1]} {rgb.shape[0]}\n".encode())
            f.write(np.ascontiguousarray(rgb).tobytes())
    elif parts[0] == "decode_resize":
        src, dw, dh, out = parts[1:]
        img = cv2.imdecode(np.fromfile(src, dtype=np.uint8), cv2.IMREAD_COLOR)
        res = cv2.resize(img, (int(dw), int(dh)), interpolation=cv2.INTER_LINEAR)
        np.ascontiguousarray(cv2.cvtColor(res, cv2.COLOR_BGR2RGB)).tofile(out)
    elif parts[0] == "frame":
        w, h, seed, jpeg, dw, dh, out = parts[1:]
        w, h = int(w), int(h)
        rng = np.random.default_rng(int(seed))
        x = np.arange(w, dtype=np.int32)[None, :, None] * np.array([60, 100, 140], dtype=np.int32) // w
        y = np.arange(h, dtype=np.int32)[:, None, None] * 150 // h
        noise = rng.integers(-16, 16, size=(h, w, 3), dtype=np.int32)
        rgb = np.clip(x + y + noise, 0, 255).astype(np.uint8)
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        enc.tofile(jpeg)
        img = cv2.imdecode(enc, cv2.IMREAD_COLOR)
        res = cv2.resize(img, (int(dw), int(dh)), interpolation=cv2.INTER_LINEAR)
        np.ascontiguousarray(cv2.cvtColor(res, cv2.COLOR_BGR2RGB)).tofile(out)
    else:
        sys.exit(f"unknown job {parts[0]}")
    print("done", flush=True)
