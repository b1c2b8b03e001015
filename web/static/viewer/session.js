// The engineer's desktop session page: live state from the portal, then the viewer.
//
// 1. Poll the portal's state endpoint (every second while the device decides): the
//    sentence to show, the countdown, whether the session can be joined.
// 2. Once it can: ask the portal for a single-use ticket and open the relay's /view
//    WebSocket with it (binary frames: desktop/wire.py messages; text frames: the
//    relay's JSON -- hello, ping/pong, rights).
// 3. A dropped connection is reopened with a new ticket while the portal says the
//    session still runs; a refusal (access withdrawn, session over) is final.
//
// No inline script (CSP): this module is loaded from 'self'. Text from the server is
// put on the page with textContent only.
"use strict";

import {KeyTracker, sendCombo} from "./keys.js";
import {Screen} from "./screen.js";
import {encode, parse, T, WireError} from "./wire.js";

const SUBPROTOCOL = "outlink.desktop.v1";
const POLL_DECIDING_MS = 1000;
const POLL_RUNNING_MS = 4000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
const PASTE_WAIT_MS = 150;
const WHEEL_NOTCH_PX = 100;

// Close codes from the relay (relay_server/desktop/viewer.py).
const FINAL_CLOSES = {
  4403: "Your access to this session was withdrawn.",
  4409: "This session was opened in another window.",
  4410: null, // the session ended: the portal says why
  4503: "The device disconnected.",
};

const root = document.getElementById("desktop");
const cfg = root.dataset;
const $ = (id) => document.getElementById(id);

const ui = {
  status: $("desktop-status"),
  message: $("desktop-message"),
  countdown: $("desktop-countdown"),
  end: $("desktop-end"),
  viewer: $("viewer"),
  canvas: $("viewer-canvas"),
  stage: $("viewer-stage"),
  conn: $("viewer-conn"),
  fps: $("viewer-fps"),
  latency: $("viewer-latency"),
  bandwidth: $("viewer-bandwidth"),
  size: $("viewer-size"),
  scale: $("viewer-scale"),
  monitor: $("viewer-monitor"),
  quality: $("viewer-quality"),
  combosToggle: $("viewer-combos-toggle"),
  combos: $("viewer-combos"),
  fullscreen: $("viewer-fullscreen"),
  clipboard: $("viewer-clipboard"),
  clipRemote: $("viewer-clip-remote"),
  clipLocal: $("viewer-clip-local"),
  clipCopy: $("viewer-clip-copy"),
  clipSend: $("viewer-clip-send"),
  clipToggle: $("viewer-clip-toggle"),
  clipToDevice: $("viewer-clip-to-device"),
  clipNote: $("viewer-clip-note"),
};

const session = {
  state: null,
  final: false,
  joinable: false,
  deadline: null, // ms timestamp of the consent deadline while deciding
  pollTimer: null,
  countdownTimer: null,
};

// -- the portal ------------------------------------------------------------------------

async function portal(url, body) {
  const init = {credentials: "same-origin", headers: {Accept: "application/json"}};
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRFToken"] = cfg.csrf;
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  return {ok: response.ok, status: response.status, data};
}

function showState(data) {
  session.state = data.state;
  session.final = data.final;
  session.joinable = data.joinable;
  ui.status.className = "card desktop-status desktop-state-" + data.state;
  ui.message.textContent = data.message;
  if (data.seconds_left !== null && data.seconds_left !== undefined) {
    session.deadline = Date.now() + data.seconds_left * 1000;
    tickCountdown();
  } else {
    session.deadline = null;
    ui.countdown.hidden = true;
  }
  ui.end.hidden = data.final;
  ui.end.textContent = data.joinable ? "End session" : "Withdraw request";
  if (data.final) {
    viewer.stop();
    ui.viewer.classList.add("viewer-ended"); // the last picture stays, dimmed
  }
  root.dataset.state = data.state; // tests and styles read it
}

function tickCountdown() {
  clearTimeout(session.countdownTimer);
  if (session.deadline === null) return;
  const left = Math.max(0, Math.ceil((session.deadline - Date.now()) / 1000));
  ui.countdown.hidden = false;
  ui.countdown.textContent = left > 0
    ? `${left} s left for the answer; no answer means no.`
    : "Time is up; waiting for the device to confirm…";
  if (left > 0) session.countdownTimer = setTimeout(tickCountdown, 250);
}

async function poll() {
  clearTimeout(session.pollTimer);
  let result;
  try {
    result = await portal(`${cfg.stateUrl}?session=${encodeURIComponent(cfg.session)}`);
  } catch (e) {
    result = {ok: false, status: 0};
  }
  if (result.ok && result.data) {
    showState(result.data);
    if (session.joinable && !viewer.active) viewer.start();
  } else if (result.status === 401 || result.status === 403 || result.status === 404) {
    ui.message.textContent = "You can no longer see this session (signed out or access removed).";
    session.final = true;
    viewer.stop();
    return;
  }
  if (!session.final) {
    const wait = session.joinable ? POLL_RUNNING_MS : POLL_DECIDING_MS;
    session.pollTimer = setTimeout(poll, wait);
  }
}

// -- the viewer ----------------------------------------------------------------------------

class Viewer {
  constructor() {
    this.ws = null;
    this.active = false; // wants to be connected
    this.attempt = 0;
    this.mode = cfg.mode;
    this.clipboard = false; // may send text to the device's clipboard
    this.clipboardAllowed = false; // may see the panel (the right)
    this.bytes = 0;
    this.latency = null;
    this.screen = new Screen(ui.canvas, (what) => this.recover(what));
    this.screen.onResize = (w, h) => { ui.size.textContent = `${w}×${h}`; };
    // With the device's cursor image at hand, it replaces the local one over the picture
    // (drawn where the mouse is, without waiting for the device).
    this.screen.onCursor = () => {
      ui.canvas.classList.toggle("viewer-control", this.mode === "control");
    };
    this.keys = new KeyTracker((down, keysym) => this.send(encode.key(down, keysym)));
    this.buttons = 0;
    this.pendingMove = null;
    this.wheel = {x: 0, y: 0};
    this.heldPaste = null;
    this.stats = {painted: 0, bytes: 0, at: performance.now()};
  }

  async start() {
    if (this.active) return;
    this.active = true;
    ui.viewer.hidden = false;
    await this.connect();
  }

  stop() {
    this.active = false;
    if (this.ws) this.ws.close(1000, "done");
    this.ws = null;
    ui.conn.textContent = "closed";
  }

  async connect() {
    if (!this.active) return;
    ui.conn.textContent = this.attempt ? "reconnecting…" : "connecting…";
    const result = await portal(cfg.ticketUrl, {session: cfg.session}).catch(() => null);
    if (!result || !result.ok) {
      if (result && (result.status === 409 || result.status === 403 || result.status === 404)) {
        this.active = false;
        ui.conn.textContent = "not connected";
        poll();
        return;
      }
      this.retry();
      return;
    }
    const ws = new WebSocket(result.data.url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      ui.conn.textContent = "connected";
      ui.canvas.focus();
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(ws, event);
  }

  retry() {
    if (!this.active) return;
    if (this.attempt >= RECONNECT_DELAYS_MS.length) {
      this.active = false;
      ui.conn.textContent = "disconnected";
      ui.message.textContent = "The connection to the device was lost. Reload the page to try again.";
      return;
    }
    const delay = RECONNECT_DELAYS_MS[this.attempt++];
    ui.conn.textContent = `reconnecting in ${Math.round(delay / 1000)} s…`;
    setTimeout(() => this.connect(), delay);
  }

  closed(ws, event) {
    if (this.ws !== ws) return; // an older connection
    this.ws = null;
    this.keys.releaseAll();
    if (!this.active) return;
    if (event.code in FINAL_CLOSES) {
      this.active = false;
      ui.conn.textContent = "closed";
      if (FINAL_CLOSES[event.code]) ui.message.textContent = FINAL_CLOSES[event.code];
      poll(); // the portal's words for why it ended
      return;
    }
    this.retry();
  }

  send(data) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && data) this.ws.send(data);
  }

  receive(data) {
    if (typeof data === "string") {
      this.relayMessage(data);
      return;
    }
    this.bytes += data.byteLength;
    let message;
    try {
      message = parse(data);
    } catch (e) {
      if (e instanceof WireError) {
        this.recover("malformed message from the device: " + e.message);
        return;
      }
      throw e;
    }
    if (message.type === T.MONITORS) this.showMonitors(message);
    else if (message.type === T.CLIPBOARD) this.remoteClipboard(message.text);
    else this.screen.handle(message);
  }

  relayMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (msg.op === "hello") {
      this.mode = msg.mode;
      this.setClipboard(msg.clipboard === true);
    } else if (msg.op === "ping") {
      this.send(JSON.stringify({op: "pong", t: msg.t}));
      if (typeof msg.rtt_ms === "number") {
        this.latency = msg.rtt_ms + (typeof msg.device_rtt_ms === "number" ? msg.device_rtt_ms : 0);
      }
    } else if (msg.op === "rights") {
      this.setClipboard(msg.clipboard === true);
    }
  }

  recover(what) {
    console.warn("viewer:", what);
    this.send(encode.refresh());
  }

  // -- toolbar ------------------------------------------------------------------------

  showMonitors(message) {
    const select = ui.monitor;
    select.replaceChildren();
    message.monitors.forEach((m, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = i === 0 ? `All (${m.width}×${m.height})`
        : `${i}: ${m.width}×${m.height}${m.primary ? " (primary)" : ""}`;
      select.append(option);
    });
    select.value = String(message.current);
    select.disabled = message.monitors.length <= 2; // "all" and the only one are the same
  }

  // The clipboard right (the relay's hello and rights messages): with it, text copied
  // on the device shows in the panel; with it in a control session, text goes to the
  // device too. The device enforces the same rule.
  setClipboard(allowed) {
    this.clipboardAllowed = allowed;
    this.clipboard = allowed && this.mode === "control";
    ui.clipToggle.hidden = !allowed;
    if (!allowed) showClipboardPanel(false);
    ui.clipToDevice.hidden = !this.clipboard;
    ui.clipLocal.disabled = ui.clipSend.disabled = !this.clipboard;
  }

  remoteClipboard(text) {
    if (!this.clipboardAllowed) return;
    ui.clipRemote.value = text;
    ui.clipCopy.disabled = false;
    clipNote(`${text.length} characters copied on the device.`);
    if (ui.clipboard.hidden) ui.clipToggle.classList.add("viewer-clip-new");
    if (navigator.clipboard && document.hasFocus()) {
      navigator.clipboard.writeText(text).then(
        () => clipNote(`${text.length} characters copied on the device, now in your clipboard too.`),
        () => {}, // not allowed here: the panel has it, and its button copies it
      );
    }
  }

  sendClipboard(text) {
    if (!this.clipboard) return false;
    const data = encode.clipboard(text);
    if (data === null) {
      clipNote("That text is too long for the clipboard (256 KB at most).");
      return false;
    }
    this.send(data);
    clipNote(`${text.length} characters sent to the device's clipboard.`);
    return true;
  }

  // -- input --------------------------------------------------------------------------

  get controls() {
    return this.mode === "control" && this.ws !== null;
  }

  pointer(event) {
    const at = this.screen.toPicture(event);
    this.screen.localPointer = this.mode === "control" ? at : null;
    this.screen.invalidate();
    if (!this.controls) return;
    if (event.type === "pointermove" && browserButtons(event.buttons) === this.buttons) {
      const first = this.pendingMove === null;
      this.pendingMove = at; // one move per animation frame is plenty
      if (first) requestAnimationFrame(() => this.flushMove());
      return;
    }
    this.buttons = browserButtons(event.buttons);
    this.pendingMove = null;
    this.send(encode.pointer(at.x, at.y, this.buttons));
  }

  flushMove() {
    if (this.pendingMove === null) return;
    const at = this.pendingMove;
    this.pendingMove = null;
    this.send(encode.pointer(at.x, at.y, this.buttons));
  }

  wheelEvent(event) {
    event.preventDefault();
    if (!this.controls) return;
    const unit = event.deltaMode === 1 ? WHEEL_NOTCH_PX / 3 : event.deltaMode === 2 ? 800 : 1;
    this.wheel.x += event.deltaX * unit;
    this.wheel.y += event.deltaY * unit;
    const dx = Math.trunc(this.wheel.x / WHEEL_NOTCH_PX);
    const dy = Math.trunc(this.wheel.y / WHEEL_NOTCH_PX);
    if (dx === 0 && dy === 0) return;
    this.wheel.x -= dx * WHEEL_NOTCH_PX;
    this.wheel.y -= dy * WHEEL_NOTCH_PX;
    this.send(encode.wheel(dx, dy));
  }

  keydown(event) {
    if (!this.controls) return;
    const paste = (event.key === "v" || event.key === "V") && (event.ctrlKey || event.metaKey);
    if (this.clipboard && (paste || (event.key === "Insert" && event.shiftKey))) {
      // Let the browser fire "paste" with the local clipboard; send that text first,
      // then the keys, so the device pastes what the engineer copied.
      this.heldPaste = event;
      setTimeout(() => this.releasePaste(), PASTE_WAIT_MS);
      return;
    }
    if (this.keys.down(event)) event.preventDefault();
  }

  releasePaste() {
    const event = this.heldPaste;
    this.heldPaste = null;
    if (event) this.keys.down(event);
  }

  paste(event) {
    if (!this.heldPaste) return;
    event.preventDefault();
    this.sendClipboard(event.clipboardData.getData("text/plain"));
    this.releasePaste();
  }

  keyup(event) {
    if (!this.controls) return;
    if (this.heldPaste && this.heldPaste.code === event.code) this.releasePaste();
    if (this.keys.up(event)) event.preventDefault();
  }

  // -- status bar ----------------------------------------------------------------------

  tick() {
    const now = performance.now();
    const seconds = (now - this.stats.at) / 1000;
    if (seconds <= 0) return;
    const fps = (this.screen.painted - this.stats.painted) / seconds;
    const rate = (this.bytes - this.stats.bytes) / seconds;
    this.stats = {painted: this.screen.painted, bytes: this.bytes, at: now};
    ui.fps.textContent = `${fps.toFixed(fps < 10 ? 1 : 0)} fps`;
    ui.bandwidth.textContent = rate >= 125000
      ? `${(rate * 8 / 1e6).toFixed(1)} Mbit/s` : `${(rate / 1000).toFixed(0)} KB/s`;
    ui.latency.textContent = this.latency === null ? "latency —"
      : `latency ${Math.round(this.latency)} ms`;
  }
}

function clipNote(text) {
  ui.clipNote.textContent = text;
}

function showClipboardPanel(shown) {
  ui.clipboard.hidden = !shown;
  ui.clipToggle.setAttribute("aria-expanded", String(shown));
  if (shown) ui.clipToggle.classList.remove("viewer-clip-new");
}

/** The device's text into the engineer's clipboard: the Clipboard API where the browser
 * allows it, else the old way (select the text, copy). */
async function copyToLocal() {
  const text = ui.clipRemote.value;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    ui.clipRemote.focus();
    ui.clipRemote.select();
    if (!document.execCommand("copy")) {
      clipNote("Your browser did not allow copying: the text is selected, press Ctrl+C.");
      return;
    }
  }
  clipNote(`${text.length} characters copied to your clipboard.`);
}

/** Browser buttons (1 left, 2 right, 4 middle) -> wire (bit 0 left, 1 middle, 2 right). */
function browserButtons(b) {
  return (b & 1) | ((b & 4) ? 2 : 0) | ((b & 2) ? 4 : 0);
}

const viewer = new Viewer();

// -- wiring ----------------------------------------------------------------------------------

function wire() {
  const canvas = ui.canvas;
  for (const type of ["pointermove", "pointerdown", "pointerup"]) {
    canvas.addEventListener(type, (event) => {
      if (type === "pointerdown") {
        canvas.focus();
        canvas.setPointerCapture(event.pointerId);
      }
      viewer.pointer(event);
      if (viewer.controls) event.preventDefault();
    });
  }
  canvas.addEventListener("pointerleave", () => {
    viewer.screen.localPointer = null;
    viewer.screen.invalidate();
  });
  canvas.addEventListener("wheel", (event) => viewer.wheelEvent(event), {passive: false});
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("keydown", (event) => viewer.keydown(event));
  canvas.addEventListener("keyup", (event) => viewer.keyup(event));
  canvas.addEventListener("blur", () => viewer.keys.releaseAll());
  document.addEventListener("paste", (event) => viewer.paste(event));

  ui.scale.addEventListener("change", () => viewer.screen.setScale(ui.scale.value));
  window.addEventListener("resize", () => viewer.screen.applyScale());
  ui.monitor.addEventListener("change", () => {
    viewer.send(encode.selectMonitor(Number(ui.monitor.value)));
  });
  ui.quality.addEventListener("change", () => {
    viewer.send(encode.settings(0, Number(ui.quality.value)));
  });
  ui.combosToggle.addEventListener("click", () => {
    ui.combos.hidden = !ui.combos.hidden;
    ui.combosToggle.setAttribute("aria-expanded", String(!ui.combos.hidden));
  });
  ui.combos.querySelectorAll("button[data-combo]").forEach((button) => {
    button.addEventListener("click", () => {
      if (!viewer.controls) return;
      const keysyms = button.dataset.combo.split(",").map((k) => parseInt(k, 16));
      sendCombo((down, keysym) => viewer.send(encode.key(down, keysym)), keysyms);
      ui.combos.hidden = true;
      ui.canvas.focus();
    });
  });
  ui.fullscreen.addEventListener("click", () => {
    if (ui.stage.requestFullscreen) ui.stage.requestFullscreen().catch(() => {});
  });
  document.addEventListener("fullscreenchange", () => viewer.screen.applyScale());
  ui.clipToggle.addEventListener("click", () => showClipboardPanel(ui.clipboard.hidden));
  ui.clipCopy.addEventListener("click", () => copyToLocal());
  ui.clipSend.addEventListener("click", () => {
    if (viewer.sendClipboard(ui.clipLocal.value)) ui.clipLocal.value = "";
  });
  ui.end.addEventListener("click", async () => {
    ui.end.disabled = true;
    const result = await portal(cfg.endUrl, {session: cfg.session}).catch(() => null);
    viewer.stop();
    if (result && result.data && result.data.state) showState(result.data);
    poll();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) viewer.keys.releaseAll();
  });
  setInterval(() => viewer.tick(), 1000);
}

wire();
poll();
window.outlinkViewer = viewer; // for the browser tests and for debugging from the console
