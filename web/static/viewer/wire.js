// The desktop channel's binary messages (desktop/wire.py is the specification):
// device -> viewer messages parsed, viewer -> device messages built. Big-endian
// throughout. The parser checks lengths and bounds and throws WireError on anything
// malformed; it does not decode images (the browser does, off the main thread).
"use strict";

export const T = Object.freeze({
  FRAME: 0x01, CURSOR_POS: 0x02, CURSOR_SHAPE: 0x03, MONITORS: 0x04, CLIPBOARD: 0x05,
  POINTER: 0x10, WHEEL: 0x11, KEY: 0x12, REFRESH: 0x13, SELECT_MONITOR: 0x14, SETTINGS: 0x15,
});
export const CODEC = Object.freeze({FILL: 1, JPEG: 2, WEBP_LOSSLESS: 3, COPY: 4});
const FLAG_FINAL = 0x01;
const FLAG_FULL = 0x02;
const MAX_SIDE = 16384;
const MAX_RECTS = 4096;
const MAX_CURSOR_SIDE = 256;
const MAX_MONITORS = 16;
export const MAX_CLIPBOARD = 256 * 1024;
export const MAX_WHEEL_STEPS = 32;

export class WireError extends Error {}

const utf8 = new TextEncoder();
const utf8In = new TextDecoder("utf-8", {fatal: true});

function need(ok, what) {
  if (!ok) throw new WireError(what);
}

function parseFrame(view, bytes) {
  need(bytes.length >= 13, "FRAME: truncated header");
  const flags = view.getUint8(1);
  const seq = view.getUint32(2);
  const monitor = view.getUint8(6);
  const width = view.getUint16(7);
  const height = view.getUint16(9);
  const count = view.getUint16(11);
  need((flags & ~(FLAG_FINAL | FLAG_FULL)) === 0, "FRAME: reserved flags");
  need(width > 0 && height > 0 && width <= MAX_SIDE && height <= MAX_SIDE, "FRAME: size");
  need(count > 0 && count <= MAX_RECTS && monitor < MAX_MONITORS, "FRAME: count");
  let offset = 13 + count * 13;
  need(bytes.length >= offset, "FRAME: truncated rectangles");
  const rects = [];
  for (let i = 0; i < count; i++) {
    const at = 13 + i * 13;
    const x = view.getUint16(at), y = view.getUint16(at + 2);
    const w = view.getUint16(at + 4), h = view.getUint16(at + 6);
    const codec = view.getUint8(at + 8);
    const length = view.getUint32(at + 9);
    need(w > 0 && h > 0 && x + w <= width && y + h <= height, "FRAME: rectangle outside");
    need(codec >= CODEC.FILL && codec <= CODEC.COPY, "FRAME: codec");
    need(length <= bytes.length - offset, "FRAME: payload truncated");
    const data = bytes.subarray(offset, offset + length);
    if (codec === CODEC.FILL) need(length === 3, "FRAME: FILL payload");
    if (codec === CODEC.COPY) need(length === 4, "FRAME: COPY payload");
    offset += length;
    rects.push({x, y, w, h, codec, data});
  }
  need(offset === bytes.length, "FRAME: trailing bytes");
  return {type: T.FRAME, final: (flags & FLAG_FINAL) !== 0, full: (flags & FLAG_FULL) !== 0,
          seq, monitor, width, height, rects};
}

function parseMonitors(view, bytes) {
  need(bytes.length >= 3, "MONITORS: truncated");
  const current = view.getUint8(1);
  const count = view.getUint8(2);
  need(count >= 1 && count <= MAX_MONITORS && current < count, "MONITORS: count");
  need(bytes.length === 3 + count * 13, "MONITORS: length");
  const monitors = [];
  for (let i = 0; i < count; i++) {
    const at = 3 + i * 13;
    monitors.push({left: view.getInt32(at), top: view.getInt32(at + 4),
                   width: view.getUint16(at + 8), height: view.getUint16(at + 10),
                   primary: view.getUint8(at + 12) === 1});
  }
  return {type: T.MONITORS, current, monitors};
}

/** One message from the device (an ArrayBuffer) as a plain object. */
export function parse(buffer) {
  const bytes = new Uint8Array(buffer);
  need(bytes.length > 0, "empty message");
  const view = new DataView(buffer);
  switch (bytes[0]) {
    case T.FRAME:
      return parseFrame(view, bytes);
    case T.CURSOR_POS:
      need(bytes.length === 6, "CURSOR_POS: length");
      return {type: T.CURSOR_POS, x: view.getInt16(1), y: view.getInt16(3),
              visible: bytes[5] === 1};
    case T.CURSOR_SHAPE: {
      need(bytes.length >= 13, "CURSOR_SHAPE: truncated");
      const w = view.getUint16(9), h = view.getUint16(11);
      const hotX = view.getUint16(5), hotY = view.getUint16(7);
      need(w > 0 && h > 0 && w <= MAX_CURSOR_SIDE && h <= MAX_CURSOR_SIDE, "CURSOR_SHAPE: size");
      need(hotX < w && hotY < h && bytes.length === 13 + w * h * 4, "CURSOR_SHAPE: data");
      return {type: T.CURSOR_SHAPE, serial: view.getUint32(1), hotX, hotY, w, h,
              rgba: new Uint8ClampedArray(buffer, 13, w * h * 4)};
    }
    case T.MONITORS:
      return parseMonitors(view, bytes);
    case T.CLIPBOARD:
      need(bytes.length - 1 <= MAX_CLIPBOARD, "CLIPBOARD: too long");
      try {
        return {type: T.CLIPBOARD, text: utf8In.decode(bytes.subarray(1))};
      } catch (e) {
        throw new WireError("CLIPBOARD: not UTF-8");
      }
    default:
      throw new WireError("unexpected message type " + bytes[0]);
  }
}

function packet(size, type) {
  const buffer = new ArrayBuffer(size);
  const view = new DataView(buffer);
  view.setUint8(0, type);
  return [buffer, view];
}

/** Messages to the device, as ArrayBuffers ready for WebSocket.send. */
export const encode = Object.freeze({
  pointer(x, y, buttons) {
    const [buffer, view] = packet(6, T.POINTER);
    view.setUint16(1, x);
    view.setUint16(3, y);
    view.setUint8(5, buttons & 0b111);
    return buffer;
  },
  wheel(dx, dy) {
    const [buffer, view] = packet(3, T.WHEEL);
    view.setInt8(1, Math.max(-MAX_WHEEL_STEPS, Math.min(MAX_WHEEL_STEPS, dx)));
    view.setInt8(2, Math.max(-MAX_WHEEL_STEPS, Math.min(MAX_WHEEL_STEPS, dy)));
    return buffer;
  },
  key(down, keysym) {
    const [buffer, view] = packet(6, T.KEY);
    view.setUint8(1, down ? 1 : 0);
    view.setUint32(2, keysym);
    return buffer;
  },
  refresh() {
    return packet(1, T.REFRESH)[0];
  },
  selectMonitor(index) {
    const [buffer, view] = packet(2, T.SELECT_MONITOR);
    view.setUint8(1, index);
    return buffer;
  },
  settings(maxFps, quality) {
    const [buffer, view] = packet(3, T.SETTINGS);
    view.setUint8(1, maxFps);
    view.setUint8(2, quality);
    return buffer;
  },
  /** null when the text is over the wire's limit (the caller says so). */
  clipboard(text) {
    const body = utf8.encode(text);
    if (body.length > MAX_CLIPBOARD) return null;
    const out = new Uint8Array(body.length + 1);
    out[0] = T.CLIPBOARD;
    out.set(body, 1);
    return out.buffer;
  },
});
