// Browser keyboard events -> X11 keysyms (what the device's XTest injector takes).
//
// The keysym names the symbol the key produced (event.key), so the device's own
// keymap need not match the browser's: typing "é" on a French keyboard sends
// U+00E9 and the device produces "é". Keys that produce no character come from a
// table; the numeric keypad is told apart by event.code. Releases must name the
// keysym the press sent (Shift may have changed event.key in between), so
// KeyTracker remembers what each physical key (event.code) pressed.
"use strict";

const NAMED = {
  Backspace: 0xff08, Tab: 0xff09, Enter: 0xff0d, Escape: 0xff1b, Delete: 0xffff,
  Home: 0xff50, ArrowLeft: 0xff51, ArrowUp: 0xff52, ArrowRight: 0xff53, ArrowDown: 0xff54,
  PageUp: 0xff55, PageDown: 0xff56, End: 0xff57, Insert: 0xff63, Pause: 0xff13,
  ScrollLock: 0xff14, PrintScreen: 0xff61, ContextMenu: 0xff67, NumLock: 0xff7f,
  CapsLock: 0xffe5, AltGraph: 0xfe03, Clear: 0xff0b, Help: 0xff6a,
};

// Modifiers by physical key, so left and right stay apart.
const BY_CODE = {
  ShiftLeft: 0xffe1, ShiftRight: 0xffe2, ControlLeft: 0xffe3, ControlRight: 0xffe4,
  AltLeft: 0xffe9, AltRight: 0xffea, MetaLeft: 0xffeb, MetaRight: 0xffec,
  OSLeft: 0xffeb, OSRight: 0xffec,
  NumpadEnter: 0xff8d, NumpadAdd: 0xffab, NumpadSubtract: 0xffad, NumpadMultiply: 0xffaa,
  NumpadDivide: 0xffaf, NumpadDecimal: 0xffae, NumpadEqual: 0xffbd,
};

const KP_DIGIT0 = 0xffb0;
const F1 = 0xffbe;
const UNICODE_BASE = 0x01000000;

/** The keysym for a keydown/keyup, or null for keys that produce nothing to send. */
export function keysymFor(event) {
  const key = event.key;
  if (event.code === "AltRight" && key === "AltGraph") return NAMED.AltGraph;
  if (event.code in BY_CODE) return BY_CODE[event.code];
  if (/^Numpad[0-9]$/.test(event.code) && /^[0-9]$/.test(key)) {
    return KP_DIGIT0 + Number(key);
  }
  if (key in NAMED) return NAMED[key];
  const fn = /^F([1-9]|1[0-9]|2[0-4])$/.exec(key);
  if (fn) return F1 + Number(fn[1]) - 1;
  if (key.length === 0 || [...key].length !== 1) return null; // "Dead", "Unidentified"...
  const cp = key.codePointAt(0);
  if (cp < 0x20 || cp === 0x7f) return null;
  // Latin-1 keysyms equal their code points; everything else is Unicode + 0x01000000.
  if (cp <= 0x7e || (cp >= 0xa0 && cp <= 0xff)) return cp;
  return UNICODE_BASE + cp;
}

/** Which keysym each held physical key pressed; releases them all on demand. */
export class KeyTracker {
  constructor(send) {
    this.send = send; // (down: boolean, keysym: number) => void
    this.held = new Map();
  }

  down(event) {
    const keysym = keysymFor(event);
    if (keysym === null) return false;
    const code = event.code || event.key;
    const before = this.held.get(code);
    if (before !== undefined && before !== keysym) this.send(false, before);
    this.held.set(code, keysym);
    this.send(true, keysym); // repeats (event.repeat) press again: the device repeats
    return true;
  }

  up(event) {
    const code = event.code || event.key;
    const keysym = this.held.has(code) ? this.held.get(code) : keysymFor(event);
    this.held.delete(code);
    if (keysym === null) return false;
    this.send(false, keysym);
    return true;
  }

  releaseAll() {
    for (const keysym of this.held.values()) this.send(false, keysym);
    this.held.clear();
  }
}

/** Press the keysyms in order, release them in reverse (Ctrl+Alt+Del and friends). */
export function sendCombo(send, keysyms) {
  for (const keysym of keysyms) send(true, keysym);
  for (const keysym of [...keysyms].reverse()) send(false, keysym);
}
