// The picture: FRAME messages applied to a backing canvas, shown on the page's canvas
// with the device's cursor on top.
//
// Images are decoded by the browser (createImageBitmap, off the main thread) as soon
// as their message arrives, all rectangles of a message in parallel; the rectangles
// are then applied strictly in order (a COPY reads the picture as the rectangles
// before it left it), and messages strictly in arrival order. After a FINAL part (a
// whole screen update) the changed area -- only that -- is copied to the page's canvas
// at once: the browser shows the canvas at its next frame either way, and waiting for
// requestAnimationFrame only made the pixels later to read (the benchmark's probe) and
// cost a full-screen copy per frame. Never for half an update. Cursor-only changes
// (they come with every mouse move) are coalesced to one redraw per animation frame.
"use strict";

import {CODEC, T} from "./wire.js";

const MIME = {[CODEC.JPEG]: "image/jpeg", [CODEC.WEBP_LOSSLESS]: "image/webp"};

export class Screen {
  constructor(canvas, onError) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", {alpha: false});
    this.backing = document.createElement("canvas");
    this.bctx = this.backing.getContext("2d", {alpha: false});
    this.width = 0;
    this.height = 0;
    this.onError = onError; // (what: string) => void; the session asks for a refresh
    this.queue = Promise.resolve();
    this.painted = 0; // whole updates shown (the status bar's fps)
    this.cursor = {x: 0, y: 0, visible: false, image: null, hotX: 0, hotY: 0, serial: -1};
    this.localPointer = null; // {x, y} in picture pixels while the mouse is over us
    this.scale = "fit";
    this.dirty = false;
    this.damage = null; // {x0, y0, x1, y1}: picture changed but not shown yet
    this.cursorAt = null; // {x, y, w, h}: where the cursor is drawn on the page's canvas
    this.onResize = null;
    this.onCursor = null;
  }

  /** Queue one device message; returns when it has been applied. */
  handle(message) {
    if (message.type === T.FRAME) {
      const decoded = decodeImages(message);
      this.queue = this.queue.then(() => decoded).then(
        (bitmaps) => this.apply(message, bitmaps),
        (err) => this.onError("an image could not be decoded: " + err),
      );
    } else if (message.type === T.CURSOR_SHAPE) {
      const data = new ImageData(new Uint8ClampedArray(message.rgba), message.w, message.h);
      this.queue = this.queue.then(() => createImageBitmap(data)).then((image) => {
        if (this.cursor.image) this.cursor.image.close();
        Object.assign(this.cursor, {image, hotX: message.hotX, hotY: message.hotY,
                                    serial: message.serial});
        if (this.onCursor) this.onCursor();
        this.invalidate();
      }, () => {});
    } else if (message.type === T.CURSOR_POS) {
      Object.assign(this.cursor, {x: message.x, y: message.y, visible: message.visible});
      this.invalidate();
    }
    return this.queue;
  }

  apply(frame, bitmaps) {
    if (frame.width !== this.width || frame.height !== this.height) this.resize(frame);
    const ctx = this.bctx;
    frame.rects.forEach((r, i) => {
      this.changed(r.x, r.y, r.w, r.h);
      if (r.codec === CODEC.FILL) {
        ctx.fillStyle = `rgb(${r.data[0]}, ${r.data[1]}, ${r.data[2]})`;
        ctx.fillRect(r.x, r.y, r.w, r.h);
      } else if (r.codec === CODEC.COPY) {
        const view = new DataView(r.data.buffer, r.data.byteOffset, 4);
        ctx.drawImage(this.backing, view.getUint16(0), view.getUint16(2), r.w, r.h,
                      r.x, r.y, r.w, r.h);
      } else {
        ctx.drawImage(bitmaps[i], r.x, r.y, r.w, r.h);
        bitmaps[i].close();
      }
    });
    if (frame.final) {
      this.painted += 1;
      this.paint();
    }
  }

  changed(x, y, w, h) {
    const d = this.damage;
    this.damage = d ? {x0: Math.min(d.x0, x), y0: Math.min(d.y0, y),
                       x1: Math.max(d.x1, x + w), y1: Math.max(d.y1, y + h)}
                    : {x0: x, y0: y, x1: x + w, y1: y + h};
  }

  resize(frame) {
    this.width = this.backing.width = this.canvas.width = frame.width;
    this.height = this.backing.height = this.canvas.height = frame.height;
    this.bctx.fillStyle = "#000";
    this.bctx.fillRect(0, 0, this.width, this.height);
    this.cursorAt = null; // resizing cleared the page's canvas
    this.changed(0, 0, this.width, this.height);
    this.applyScale();
    if (this.onResize) this.onResize(this.width, this.height);
  }

  setScale(scale) {
    this.scale = scale;
    this.applyScale();
  }

  /** Fit: as large as the stage allows, never larger than 1:1. (CSSOM, not a style
   * attribute: the page's CSP forbids inline styles.) */
  applyScale() {
    const style = this.canvas.style;
    if (this.scale === "fit" && this.width) {
      const stage = this.canvas.parentElement.getBoundingClientRect();
      const factor = Math.min(1, stage.width / this.width,
                              Math.max(200, window.innerHeight - 160) / this.height);
      style.width = Math.floor(this.width * factor) + "px";
      style.height = Math.floor(this.height * factor) + "px";
    } else {
      style.width = this.width + "px";
      style.height = this.height + "px";
    }
  }

  /** Picture coordinates of a pointer event, clamped to the picture. */
  toPicture(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left) * this.width / box.width);
    const y = Math.floor((event.clientY - box.top) * this.height / box.height);
    return {x: Math.max(0, Math.min(this.width - 1, x)),
            y: Math.max(0, Math.min(this.height - 1, y))};
  }

  invalidate() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => this.paint());
  }

  /** Show what changed since the last paint, and the cursor on top (its old place
   * restored from the picture first). */
  paint() {
    this.dirty = false;
    if (!this.width) return;
    const d = this.damage;
    this.damage = null;
    if (d) this.copy(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    const old = this.cursorAt;
    if (old) this.copy(old.x, old.y, old.w, old.h);
    const c = this.cursor;
    // Over the picture, the cursor follows the local mouse at once; elsewhere it is
    // where the device says.
    const at = this.localPointer || (c.visible ? c : null);
    if (at && c.image) {
      this.cursorAt = {x: at.x - c.hotX, y: at.y - c.hotY, w: c.image.width, h: c.image.height};
      this.ctx.drawImage(c.image, this.cursorAt.x, this.cursorAt.y);
    } else {
      this.cursorAt = null;
    }
  }

  /** Picture to page canvas, one rectangle, clipped to the picture. */
  copy(x, y, w, h) {
    const x0 = Math.max(0, x), y0 = Math.max(0, y);
    const x1 = Math.min(this.width, x + w), y1 = Math.min(this.height, y + h);
    if (x1 <= x0 || y1 <= y0) return;
    this.ctx.drawImage(this.backing, x0, y0, x1 - x0, y1 - y0, x0, y0, x1 - x0, y1 - y0);
  }

  /** RGB of one picture pixel as shown (for tests and the status bar's checks). */
  pixel(x, y) {
    const d = this.bctx.getImageData(x, y, 1, 1).data;
    return [d[0], d[1], d[2]];
  }
}

function decodeImages(frame) {
  return Promise.all(frame.rects.map((r) => {
    if (r.codec !== CODEC.JPEG && r.codec !== CODEC.WEBP_LOSSLESS) return null;
    return createImageBitmap(new Blob([r.data], {type: MIME[r.codec]}));
  }));
}
