#!/usr/bin/env python3
"""A small simulated Marlin printer on a pseudo-terminal, for printvigil's tests.

Standard library only. It opens a pty, points a symlink (the test's stand-in for a
/dev/serial/by-id/ path) at the slave side and speaks Marlin's serial protocol on the master
side: `N<n> <cmd>*<xor>` lines with checksums (a bad checksum or line number gets
`Error:...`, `Resend: <n>` and `ok`, as Marlin does), M110, M115 (firmware name and Cap:
lines), M105/M155, M20/M23/M24/M25/M26/M27 (also `M27 C` and `M27 S<n>`), M524, M601/M602
(with --prusa), and prints an SD file over a few seconds with `SD printing byte X/Y`
progress and `Done printing file`.

The test drives it through stdin, one command a line, and reads answers on stdout:
  select FILE SIZE SECS   put a file on the card (default: cube.gcode)
  screen_start FILE       start a print "from the printer's screen" (nothing sent to the host)
  lcd_pause / lcd_resume  pause/resume from the screen (sends //action:paused / resumed)
  corrupt N               take the next N numbered lines as checksum errors
  garbage                 write 3 KiB of noise and a binary line
  notify TEXT             //action:notification TEXT
  kill                    Error:Printer halted. kill() called! (then silent until reset)
  reset                   the board restarts (boot banner, print lost)
  mute / unmute           stop / start answering
  unplug / replug         close the pty and remove the link / a new pty behind the link
  status                  prints `STATUS {json}`
  quit
It prints `READY <link>` once the link exists, and `CONNECTED`/`DISCONNECTED` when a host
opens or closes the port (a pty master sees the slave's last close as a hang-up).
"""
import argparse
import json
import os
import pty
import random
import re
import select
import sys
import time
import tty

LINE_RE = re.compile(r"^N(\d+)\s+(.*)\*(\d+)$")


def out(msg):
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class Sim:
    def __init__(self, a):
        self.a = a
        self.link = a.link
        self.master = None
        self.connected = False
        self.buf = b""
        self.last_n = 0
        self.corrupt = 0
        self.muted = False
        self.halted = False
        self.files = {"cube.gcode": (a.size, a.print_secs)}
        self.selected = None
        self.printing = False
        self.paused = False
        self.pos = 0
        self.size = 0
        self.secs = 1.0
        self.sd_interval = 0
        self.temp_interval = 0
        self.next_sd = 0
        self.next_temp = 0
        self.stats = {"resends": 0, "checksum_errors": 0, "cmds": {}, "opens": 0, "prints": 0, "done": 0}
        self.plug()

    # --- the pty -------------------------------------------------------------------
    def plug(self):
        master, slave = pty.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        self.master = master
        self.connected = False
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        os.symlink(name, self.link)

    def unplug(self):
        if self.master is not None:
            os.close(self.master)
            self.master = None
        self.connected = False
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass

    def send(self, text):
        if self.master is None or not self.connected:
            return
        try:
            os.write(self.master, (text + "\n").encode())
        except OSError:
            pass

    # --- the printer ----------------------------------------------------------------
    def boot(self):
        self.printing = False
        self.paused = False
        self.halted = False
        self.selected = None
        self.sd_interval = 0
        self.temp_interval = 0
        self.last_n = 0
        self.send("start")
        self.send("echo:Marlin sim")
        self.send("echo: Last Updated: 2026-01-01 | Author: (printvigil tests)")
        self.send("echo:SD card ok")

    def report_sd(self):
        if self.selected is not None and (self.printing or self.paused):
            self.send("SD printing byte %d/%d" % (self.pos, self.size))
        else:
            self.send("Not SD printing")

    def temps(self):
        t = "T:%.2f /%.2f B:%.2f /%.2f @:0 B@:0" % (
            210.0 if self.printing else 22.0, 210.0 if self.printing else 0.0,
            60.0 if self.printing else 21.5, 60.0 if self.printing else 0.0)
        return t

    def open_file(self, name, quiet=False):
        size, secs = self.files.get(name, (self.a.size, self.a.print_secs))
        self.selected = name
        self.size = size
        self.secs = secs
        self.pos = 0
        if not quiet:
            self.send("echo:Now fresh file: %s" % name)
            self.send("File opened: %s Size: %d" % (name, size))
            self.send("File selected")

    def start_print(self):
        self.printing = True
        self.paused = False
        self.pos = 0
        self.stats["prints"] += 1

    def short(self, name):
        base = name.upper().replace(" ", "")
        stem = base.split(".")[0][:6]
        return stem + "~1.GCO"

    def command(self, cmd):
        word = cmd.split()[0].upper() if cmd.split() else ""
        self.stats["cmds"][word] = self.stats["cmds"].get(word, 0) + 1
        args = cmd.split()[1:]
        if word == "M110":
            pass
        elif word == "M115":
            self.send("FIRMWARE_NAME:%s SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin PROTOCOL_VERSION:1.0 MACHINE_TYPE:Sim EXTRUDER_COUNT:1"
                      % ("Prusa-Firmware 3.14.1" if self.a.prusa else "Marlin 2.1.2.4 (sim)"))
            for cap, on in [("SERIAL_XON_XOFF", 0), ("EEPROM", 1), ("AUTOREPORT_TEMP", self.a.autoreport),
                            ("AUTOREPORT_SD_STATUS", self.a.autoreport), ("HOST_ACTION_COMMANDS", 1),
                            ("EMERGENCY_PARSER", 1), ("PROMPT_SUPPORT", 0)]:
                self.send("Cap:%s:%d" % (cap, on))
        elif word == "M105":
            self.send("ok " + self.temps())
            return
        elif word == "M155":
            s = [a for a in args if a.startswith("S")]
            self.temp_interval = int(s[0][1:]) if s else 0
            self.next_temp = time.monotonic() + self.temp_interval
        elif word == "M27":
            if args and args[0].upper() == "C":
                if self.selected is not None and (self.printing or self.paused):
                    self.send("Current file: %s %s" % (self.short(self.selected), self.selected))
                else:
                    self.send("Current file: (no file)")
            elif args and args[0].upper().startswith("S"):
                self.sd_interval = int(args[0][1:] or "0")
                self.next_sd = time.monotonic() + self.sd_interval
            else:
                self.report_sd()
        elif word == "M20":
            self.send("Begin file list")
            for f, (size, _) in self.files.items():
                self.send("%s %d" % (self.short(f), size))
            self.send("End file list")
        elif word == "M23":
            self.open_file(" ".join(args))
        elif word in ("M24", "M602") and (word == "M24" or self.a.prusa):
            if self.paused:
                self.paused = False
                self.printing = True
            elif self.selected is not None and not self.printing:
                self.start_print()
        elif word in ("M25", "M601") and (word == "M25" or self.a.prusa):
            if self.printing:
                self.printing = False
                self.paused = True
                self.send("//action:paused")
        elif word == "M26":
            s = [a for a in args if a.startswith("S")]
            if s:
                self.pos = int(s[0][1:] or "0")
        elif word == "M524" and not self.a.no_m524:
            if self.printing or self.paused:
                self.printing = False
                self.paused = False
                self.selected = None
        elif word in ("M104", "M140", "M107", "M117", "M118", "G28", "G4", "M400", "M108"):
            pass
        else:
            self.send('echo:Unknown command: "%s"' % cmd)
        self.send("ok")

    def line(self, raw):
        text = raw.decode("utf-8", "replace").strip()
        if not text or self.muted or self.halted:
            return
        m = LINE_RE.match(text)
        if m:
            n, body, cs = int(m.group(1)), m.group(2), int(m.group(3))
            want = 0
            for b in ("N%d %s" % (n, body)).encode():
                want ^= b
            # The checksum covers the line as sent, up to '*'.
            want2 = 0
            for b in text[: text.rindex("*")].encode():
                want2 ^= b
            if self.corrupt > 0 or cs != want2:
                if self.corrupt > 0:
                    self.corrupt -= 1
                self.stats["checksum_errors"] += 1
                self.stats["resends"] += 1
                self.send("Error:checksum mismatch, Last Line: %d" % self.last_n)
                self.send("Resend: %d" % (self.last_n + 1))
                self.send("ok")
                return
            is_m110 = body.split()[0].upper() == "M110" if body.split() else False
            if n != self.last_n + 1 and not is_m110:
                self.stats["resends"] += 1
                self.send("Error:Line Number is not Last Line Number+1, Last Line: %d" % self.last_n)
                self.send("Resend: %d" % (self.last_n + 1))
                self.send("ok")
                return
            if is_m110:
                nm = [a for a in body.split()[1:] if a.upper().startswith("N")]
                self.last_n = int(nm[0][1:]) if nm else n
            else:
                self.last_n = n
            self.command(body.strip())
        else:
            self.command(text)

    def tick(self, dt):
        now = time.monotonic()
        if self.printing and not self.halted:
            self.pos = min(self.size, self.pos + max(1, int(self.size * dt / self.secs)))
            if self.pos >= self.size:
                self.printing = False
                self.selected = None
                self.stats["done"] += 1
                self.send("Done printing file")
        if self.halted or self.muted:
            return
        if self.sd_interval and now >= self.next_sd:
            self.next_sd = now + self.sd_interval
            self.report_sd()
        if self.temp_interval and now >= self.next_temp:
            self.next_temp = now + self.temp_interval
            self.send(" " + self.temps())

    def control(self, cmd):
        parts = cmd.strip().split(" ", 1)
        word, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        if word == "select":
            f, size, secs = rest.rsplit(" ", 2)
            self.files[f] = (int(size), float(secs))
        elif word == "screen_start":
            self.open_file(rest or "cube.gcode", quiet=True)
            self.start_print()
        elif word == "lcd_pause":
            if self.printing:
                self.printing, self.paused = False, True
                self.send("//action:paused")
        elif word == "lcd_resume":
            if self.paused:
                self.printing, self.paused = True, False
                self.send("//action:resumed")
        elif word == "corrupt":
            self.corrupt = int(rest or "1")
        elif word == "garbage":
            noise = bytes(random.getrandbits(8) for _ in range(3072))
            if self.master is not None and self.connected:
                os.write(self.master, noise + b"\n\x00\x01\x02\xff\xfe\n")
        elif word == "notify":
            self.send("//action:notification " + rest)
        elif word == "kill":
            self.send("Error:Printer halted. kill() called!")
            self.printing = False
            self.halted = True
        elif word == "reset":
            self.boot()
        elif word == "mute":
            self.muted = True
        elif word == "unmute":
            self.muted = False
        elif word == "unplug":
            self.unplug()
        elif word == "replug":
            self.plug()
        elif word == "status":
            out("STATUS " + json.dumps({
                "connected": self.connected, "printing": self.printing, "paused": self.paused,
                "pos": self.pos, "size": self.size, "file": self.selected, "halted": self.halted,
                **self.stats}))
            return
        elif word == "quit":
            sys.exit(0)
        out("DONE " + word)

    def run(self):
        out("READY " + self.link)
        last = time.monotonic()
        stdin = sys.stdin.fileno()
        while True:
            fds = [stdin]
            hup = False
            if self.master is not None:
                p = select.poll()
                p.register(self.master, select.POLLIN | select.POLLHUP)
                ev = dict(p.poll(0))
                hup = bool(ev.get(self.master, 0) & select.POLLHUP)
                if hup and self.connected:
                    self.connected = False
                    self.buf = b""
                    out("DISCONNECTED")
                elif not hup and not self.connected:
                    self.connected = True
                    self.stats["opens"] += 1
                    out("CONNECTED")
                    if self.a.reset_on_open:
                        self.boot()
                if not hup:
                    fds.append(self.master)
            r, _, _ = select.select(fds, [], [], 0.05)
            if stdin in r:
                cmd = sys.stdin.readline()
                if not cmd:
                    return
                self.control(cmd)
            if self.master is not None and self.master in r:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                self.buf += data
                while b"\n" in self.buf:
                    raw, self.buf = self.buf.split(b"\n", 1)
                    self.line(raw)
            now = time.monotonic()
            self.tick(now - last)
            last = now
            if hup:
                time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True)
    ap.add_argument("--size", type=int, default=100000)
    ap.add_argument("--print-secs", type=float, default=6.0)
    ap.add_argument("--autoreport", type=int, default=1)
    ap.add_argument("--no-m524", action="store_true")
    ap.add_argument("--prusa", action="store_true")
    ap.add_argument("--reset-on-open", action="store_true")
    Sim(ap.parse_args()).run()


if __name__ == "__main__":
    main()
