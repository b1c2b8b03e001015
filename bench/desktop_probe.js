// In-page measurement for bench/desktop_stream.py, injected into the viewer page (noVNC's
// or ours) before its own scripts run. It never touches the viewer's canvas context: it
// copies the marker area into a scratch canvas with drawImage (works for 2d, webgl and
// bitmaprenderer canvases alike) and reads the pixels there.
//
// window.__benchConfig (set by the benchmark before this file) gives the source screen
// width and the marker layout of bench/desktop_workload.py.
//
// * Bytes: every WebSocket the page opens is counted (message payload sizes both ways).
// * Frames: a requestAnimationFrame loop -- once per displayed browser frame -- reads the
//   FRAME and CLICK markers; each change of the frame marker is logged with its time.
// * Latency: arm(n) waits for the next pointerdown/mousedown (capture phase on window,
//   before the viewer's own handlers) and then for click marker n, polled every 4 ms
//   (a setTimeout chain) and every animation frame; result in performance.now() ms.
(() => {
  "use strict";
  const cfg = window.__benchConfig;
  const LOW = 80, HIGH = 176; // a bit is black below LOW and white above HIGH, else torn/blurred
  const B = {
    rx: 0, tx: 0, rxMessages: 0,
    log: [],            // [t, value] for each change of the frame marker
    frame: -1, click: -1,
    reads: 0,
    want: null, downAt: null, seenAt: null,
  };
  window.__bench = B;

  const size = (d) =>
    typeof d === "string" ? new TextEncoder().encode(d).length : (d.byteLength ?? d.size ?? 0);
  // A constructor that returns the native socket (so its prototype is the native one,
  // which noVNC checks), plus a counting send() on that prototype.
  const Native = window.WebSocket;
  function Counted(...args) {
    const ws = new Native(...args);
    ws.addEventListener("message", (e) => { B.rx += size(e.data); B.rxMessages += 1; });
    return ws;
  }
  Counted.prototype = Native.prototype;
  for (const k of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Counted[k] = Native[k];
  window.WebSocket = Counted;
  const nativeSend = Native.prototype.send;
  Native.prototype.send = function (data) { B.tx += size(data); return nativeSend.call(this, data); };

  const scratch = document.createElement("canvas");
  let sctx = null;

  B.canvas = () => {
    let best = null;
    for (const c of document.querySelectorAll("canvas")) {
      if (!best || c.width * c.height > best.width * best.height) best = c;
    }
    return best && best.width > 0 ? best : null;
  };

  // Value of a marker in `data` (RGBA of the marker area scaled by `s`), -1 if unreadable.
  const decode = (data, w, s, m) => {
    const lum = (x, y) => {
      const i = (Math.floor(y) * w + Math.floor(x)) * 4;
      return (data[i] + data[i + 1] + data[i + 2]) / 3;
    };
    let value = 0;
    for (let i = 0; i < m.bits; i++) {
      const cx = (m.x + (i + 0.5) * cfg.block) * s;
      const top = lum(cx, (m.y + 0.5 * cfg.block) * s);
      const bottom = lum(cx, (m.y + 1.5 * cfg.block) * s);
      if (top > HIGH && bottom < LOW) value = value * 2 + 1;
      else if (top < LOW && bottom > HIGH) value = value * 2;
      else return -1;
    }
    return value;
  };

  B.read = () => {
    const c = B.canvas();
    if (!c) return false;
    const s = c.width / cfg.width;
    const w = Math.ceil(cfg.area[0] * s), h = Math.ceil(cfg.area[1] * s);
    if (scratch.width !== w || scratch.height !== h) {
      scratch.width = w; scratch.height = h;
      sctx = scratch.getContext("2d", { willReadFrequently: true });
    }
    sctx.drawImage(c, 0, 0, w, h, 0, 0, w, h);
    const data = sctx.getImageData(0, 0, w, h).data;
    const now = performance.now();
    B.reads += 1;
    const frame = decode(data, w, s, cfg.frame);
    if (frame >= 0 && frame !== B.frame) { B.frame = frame; B.log.push([now, frame]); }
    const click = decode(data, w, s, cfg.click);
    if (click >= 0) B.click = click;
    if (B.want !== null && B.seenAt === null && B.downAt !== null && B.click === B.want) {
      B.seenAt = now;
    }
    return true;
  };

  const onFrame = () => { B.read(); requestAnimationFrame(onFrame); };
  B.start = () => { if (!B.started) { B.started = true; requestAnimationFrame(onFrame); } };

  // Frame log and byte counters since the last take().
  B.take = () => {
    const out = { log: B.log, rx: B.rx, tx: B.tx, rxMessages: B.rxMessages, reads: B.reads,
                  t: performance.now() };
    B.log = []; B.rx = 0; B.tx = 0; B.rxMessages = 0; B.reads = 0;
    return out;
  };

  const onDown = () => { if (B.want !== null && B.downAt === null) B.downAt = performance.now(); };
  window.addEventListener("pointerdown", onDown, true);
  window.addEventListener("mousedown", onDown, true);

  B.arm = (n) => {
    B.want = n; B.downAt = null; B.seenAt = null;
    const poll = () => { if (B.seenAt === null && B.want === n) { B.read(); setTimeout(poll, 0); } };
    setTimeout(poll, 0);
  };
  B.latency = () => (B.seenAt === null || B.downAt === null ? null : B.seenAt - B.downAt);
  B.disarm = () => { B.want = null; };

  // Where fb point (x, y) is on the page (the viewer may scale or offset its canvas).
  B.pagePoint = (x, y) => {
    const c = B.canvas();
    const r = c.getBoundingClientRect();
    const s = c.width / cfg.width; // fb px -> canvas px
    return [r.left + (x * s * r.width) / c.width, r.top + (y * s * r.height) / c.height];
  };

  // The whole canvas as PNG (quality comparison), via the scratch path.
  B.snapshot = () => {
    const c = B.canvas();
    const full = document.createElement("canvas");
    full.width = c.width; full.height = c.height;
    full.getContext("2d").drawImage(c, 0, 0);
    return full.toDataURL("image/png");
  };
})();
