"""OpenCV reference for printvigil's pre-processing tests.

Reads jobs from stdin, one per line, and writes results where each job says:
  resize SRC W H C DW DH OUT   raw 8-bit HWC image -> cv2.resize(INTER_LINEAR) -> raw
  decode JPEG OUT              cv2.imdecode (BGR) -> RGB raw, header "W H\n"
  decode_resize JPEG DW DH OUT cv2.imdecode -> cv2.resize -> RGB raw (the server's path)
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
    else:
        sys.exit(f"unknown job {parts[0]}")
    print("done", flush=True)
