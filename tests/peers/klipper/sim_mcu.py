#!/usr/bin/env python3
"""A simulated Klipper micro-controller on a pseudo-terminal, for tests.

It speaks Klipper's serial protocol (framing, VLQ, CRC16-CCITT, sequence numbers) using
the encoder of the installed klippy (`klippy.msgproto`), answers `identify` with its own
data dictionary, keeps a clock from the monotonic clock, accepts the configuration of a
stepper (extruder), digital outputs and soft-PWM heaters, and writes the temperatures of
two heater models to files that klippy's `temperature_host` sensors read.

Two protocol facts the host relies on:
  * every message id is below 0x60, so it fits in one VLQ byte;
  * every received block is answered with an (empty) ack frame, even after a response.

Usage: sim_mcu.py LINK_PATH TEMP_DIR
  LINK_PATH  a symlink to create to the pty (klippy opens `/tmp/klipper_host_*` as a pipe)
  TEMP_DIR   where `extruder_temp` and `bed_temp` are written (millidegrees)
"""
import json
import os
import pty
import select
import signal
import sys
import time
import tty
import zlib

from klippy import msgproto

CLOCK_FREQ = 1_000_000
AMBIENT = 25.0

COMMANDS = [
    "identify offset=%u count=%c",
    "get_uptime",
    "get_clock",
    "get_config",
    "allocate_oids count=%c",
    "finalize_config crc=%u",
    "emergency_stop",
    "reset",
    "clear_shutdown",
    "config_stepper oid=%c step_pin=%c dir_pin=%c invert_step=%c step_pulse_ticks=%u",
    "queue_step oid=%c interval=%u count=%hu add=%hi",
    "set_next_step_dir oid=%c dir=%c",
    "reset_step_clock oid=%c clock=%u",
    "stepper_get_position oid=%c",
    "stepper_stop_on_trigger oid=%c trsync_oid=%c",
    "config_trsync oid=%c",
    "trsync_start oid=%c report_clock=%u report_ticks=%u expire_reason=%c",
    "trsync_set_timeout oid=%c clock=%u",
    "trsync_trigger oid=%c reason=%c",
    "config_digital_out oid=%c pin=%u value=%c default_value=%c max_duration=%u",
    "set_digital_out_pwm_cycle oid=%c cycle_ticks=%u",
    "queue_digital_out oid=%c clock=%u on_ticks=%u",
    "update_digital_out oid=%c value=%c",
    "set_digital_out pin=%u value=%c",
]
RESPONSES = [
    "identify_response offset=%u data=%.*s",
    "uptime high=%u clock=%u",
    "clock clock=%u",
    "config is_config=%c crc=%u is_shutdown=%c move_count=%hu",
    "shutdown clock=%u static_string_id=%hu",
    "is_shutdown static_string_id=%hu",
    "starting",
    "stats count=%u sum=%u sumsq=%u",
    "stepper_position oid=%c pos=%i",
    "trsync_state oid=%c can_trigger=%c trigger_reason=%c clock=%u",
]
# Pins: PA0..PA31 are plain pins; the heaters are on these two.
EXTRUDER_HEATER_PIN = "PA4"
BED_HEATER_PIN = "PA5"
PINS = {"PA%d" % i: i for i in range(32)}
STATIC_STRINGS = {"Command request": 1, "MCU reset": 2}


def build_dictionary():
    commands, responses = {}, {}
    msgid = 2  # 0 and 1 are identify_response / identify (klippy's defaults)
    for fmt in COMMANDS + RESPONSES:
        if fmt.startswith("identify"):
            continue
        (commands if fmt in COMMANDS else responses)[fmt] = msgid
        msgid += 1
    assert msgid < 0x60, "message ids must fit in one VLQ byte"
    commands["identify offset=%u count=%c"] = 1
    responses["identify_response offset=%u data=%.*s"] = 0
    return {
        "version": "printvigil-sim-mcu",
        "build_versions": "sim",
        "commands": commands,
        "responses": responses,
        "output": {},
        "enumerations": {"pin": PINS, "static_string_id": STATIC_STRINGS},
        "config": {
            "MCU": "sim",
            "CLOCK_FREQ": CLOCK_FREQ,
            "STATS_SUMSQ_BASE": 256,
            "ADC_MAX": 4095,
            "PWM_MAX": 255,
        },
    }


class Heater:
    """First-order thermal model driven by the soft-PWM duty cycle."""

    def __init__(self, path, max_temp, tau):
        self.path, self.max_temp, self.tau = path, max_temp, tau
        self.temp = AMBIENT
        self.duty = 0.0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.write()

    def step(self, dt):
        target = AMBIENT + self.duty * (self.max_temp - AMBIENT)
        self.temp += (target - self.temp) * min(1.0, dt / self.tau)

    def write(self):
        # Fixed width, written in place: the sensor keeps the file open and re-reads it.
        os.pwrite(self.fd, b"%09d\n" % int(self.temp * 1000), 0)


class SimMcu:
    def __init__(self, link, temp_dir):
        self.start = time.monotonic()
        data = json.dumps(build_dictionary()).encode()
        self.identify_data = zlib.compress(data)
        self.parser = msgproto.MessageParser()
        self.parser.process_identify(data, decompress=False)
        self.heaters = {
            EXTRUDER_HEATER_PIN: Heater(os.path.join(temp_dir, "extruder_temp"), 300.0, 6.0),
            BED_HEATER_PIN: Heater(os.path.join(temp_dir, "bed_temp"), 130.0, 10.0),
        }
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.slave = slave  # kept open so the master survives klippy closing its end
        self.link = link
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.ttyname(slave), link)
        self.reset()

    def reset(self):
        self.next_seq = 0
        self.is_config = 0
        self.crc = 0
        self.is_shutdown = 0
        self.oids = {}  # oid -> pin name (digital outs)
        self.cycle = {}  # oid -> cycle ticks
        self.positions = {}
        self.buf = b""
        for h in self.heaters.values():
            h.duty = 0.0

    def clock(self):
        return int((time.monotonic() - self.start) * CLOCK_FREQ)

    # -- output
    def send(self, fmt, **params):
        cmd = self.parser.lookup_command(fmt).encode_by_name(**params) if params else \
            self.parser.lookup_command(fmt).encode([])
        self.write_frame(cmd)

    def write_frame(self, payload):
        frame = self.parser.encode(self.next_seq, payload)
        # msgproto.encode leaves the crc as a nested list
        flat = []
        for b in frame:
            flat.extend(b if isinstance(b, list) else [b])
        try:
            os.write(self.master, bytes(flat))
        except OSError:
            pass

    # -- input
    def feed(self, data):
        self.buf += data
        while self.buf:
            if self.buf[0] == msgproto.MESSAGE_SYNC:
                self.buf = self.buf[1:]
                continue
            n = self.buf[0]
            if n < msgproto.MESSAGE_MIN or n > msgproto.MESSAGE_MAX:
                self.resync()
                continue
            if len(self.buf) < n:
                return
            block, rest = self.buf[:n], self.buf[n:]
            if (block[-1] != msgproto.MESSAGE_SYNC
                    or list(block[-3:-1]) != msgproto.crc16_ccitt(block[:-3])
                    or block[1] & ~msgproto.MESSAGE_SEQ_MASK != msgproto.MESSAGE_DEST):
                self.resync()
                continue
            self.buf = rest
            seq = block[1] & msgproto.MESSAGE_SEQ_MASK
            if seq != self.next_seq:
                self.write_frame([])  # nak: tells the host what we expect
                continue
            self.next_seq = (self.next_seq + 1) & msgproto.MESSAGE_SEQ_MASK
            self.handle_block(block)
            self.write_frame([])  # ack every block, even after a response

    def resync(self):
        i = self.buf.find(bytes([msgproto.MESSAGE_SYNC]))
        self.buf = b"" if i < 0 else self.buf[i + 1:]

    def handle_block(self, block):
        pos = msgproto.MESSAGE_HEADER_SIZE
        end = len(block) - msgproto.MESSAGE_TRAILER_SIZE
        while pos < end:
            msgid = block[pos]
            mid = self.parser.messages_by_id.get(msgid)
            if mid is None:
                return
            params, pos = mid.parse(block, pos)
            getattr(self, "cmd_" + mid.name, self.cmd_ignore)(params)

    # -- commands
    def cmd_ignore(self, p):
        pass

    def cmd_identify(self, p):
        off, count = p["offset"], p["count"]
        self.send("identify_response offset=%u data=%.*s", offset=off,
                  data=self.identify_data[off:off + count])

    def cmd_get_uptime(self, p):
        c = self.clock()
        self.send("uptime high=%u clock=%u", high=c >> 32, clock=c & 0xffffffff)

    def cmd_get_clock(self, p):
        self.send("clock clock=%u", clock=self.clock() & 0xffffffff)

    def cmd_get_config(self, p):
        self.send("config is_config=%c crc=%u is_shutdown=%c move_count=%hu",
                  is_config=self.is_config, crc=self.crc, is_shutdown=self.is_shutdown,
                  move_count=1024)

    def cmd_finalize_config(self, p):
        self.is_config, self.crc = 1, p["crc"]

    def cmd_allocate_oids(self, p):
        pass

    def cmd_emergency_stop(self, p):
        self.shutdown()

    def shutdown(self):
        if not self.is_shutdown:
            self.is_shutdown = 1
            for h in self.heaters.values():
                h.duty = 0.0
            self.send("shutdown clock=%u static_string_id=%hu",
                      clock=self.clock() & 0xffffffff, static_string_id="Command request")

    def cmd_clear_shutdown(self, p):
        self.is_shutdown = 0

    def cmd_reset(self, p):
        # A firmware restart: forget the configuration, like a rebooted board.
        self.reset()

    def cmd_config_digital_out(self, p):
        self.oids[p["oid"]] = p["pin"]
        self.set_pin(p["pin"], p["value"])

    def cmd_set_digital_out_pwm_cycle(self, p):
        self.cycle[p["oid"]] = max(1, p["cycle_ticks"])

    def cmd_queue_digital_out(self, p):
        pin = self.oids.get(p["oid"])
        cycle = self.cycle.get(p["oid"])
        if pin is None:
            return
        duty = p["on_ticks"] / cycle if cycle else (1.0 if p["on_ticks"] else 0.0)
        self.set_pin(pin, duty)

    def cmd_update_digital_out(self, p):
        pin = self.oids.get(p["oid"])
        if pin is not None:
            self.set_pin(pin, p["value"])

    def set_pin(self, pin, duty):
        h = self.heaters.get(pin)
        if h is not None and not self.is_shutdown:
            h.duty = max(0.0, min(1.0, float(duty)))

    def cmd_stepper_get_position(self, p):
        self.send("stepper_position oid=%c pos=%i", oid=p["oid"],
                  pos=self.positions.get(p["oid"], 0))

    def cmd_trsync_trigger(self, p):
        self.send("trsync_state oid=%c can_trigger=%c trigger_reason=%c clock=%u",
                  oid=p["oid"], can_trigger=0, trigger_reason=p["reason"],
                  clock=self.clock() & 0xffffffff)

    # -- main loop
    def run(self):
        last = time.monotonic()
        while True:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if data:
                    self.feed(data)
            now = time.monotonic()
            if now - last >= 0.1:
                for h in self.heaters.values():
                    h.step(now - last)
                    h.write()
                last = now


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sim = SimMcu(sys.argv[1], sys.argv[2])

    def stop(*_):
        try:
            os.unlink(sim.link)
        except OSError:
            pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("sim_mcu ready", flush=True)
    sim.run()


if __name__ == "__main__":
    main()
