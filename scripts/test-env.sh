# Sourced by scripts/test.sh and scripts/bench-daemon.sh (needs $root, the checkout): puts
# what the tests need into .runtime/ (idempotent) and exports where it is: ONNX Runtime,
# the test-tools venv (numpy, onnx, OpenCV), real Moonraker and Klipper (two venvs:
# their pins conflict), and real OctoPrint.
ORT_DYLIB_PATH=$("$root/scripts/fetch-onnxruntime.sh")
export ORT_DYLIB_PATH
"$root/scripts/setup-venv.sh" tools tests/peers/requirements-tools.txt >/dev/null
export PVTEST_TOOLS_PYTHON="$root/.runtime/venv-tools/bin/python"
PVTEST_MOONRAKER_PYTHON="$("$root/scripts/setup-venv.sh" moonraker tests/peers/requirements-moonraker.txt)/bin/python"
PVTEST_KLIPPY_PYTHON="$("$root/scripts/setup-venv.sh" klipper tests/peers/requirements-klipper.txt)/bin/python"
export PVTEST_MOONRAKER_PYTHON PVTEST_KLIPPY_PYTHON
# Real OctoPrint with its virtual printer (tests/octoprint.rs).
PVTEST_OCTOPRINT_PYTHON="$("$root/scripts/setup-venv.sh" octoprint tests/peers/requirements-octoprint.txt)/bin/python"
export PVTEST_OCTOPRINT_PYTHON
