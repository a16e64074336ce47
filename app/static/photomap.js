// The photo map's view in the browser (app/photomap.py makes its data and documents the wiring).
//
// A <canvas> drawn into a container by id: wheel zooms round the cursor, drag pans, shift-drag draws a box
// and alt-drag a lasso (or pick Box / Lasso in its toolbar; ctrl/cmd adds to the selection), a click opens a
// photo. Every photo is a dot coloured by its key; the sample is drawn as thumbnails with a coloured frame
// (solid for a label, thin for a prediction), more of them as one zooms in.
//
// Selection is computed here on the same quantised positions the server holds (payload.q steps per side),
// with the same tests as app/photomap.py select_in_box / select_in_polygon, so both select the same photos.
// What is sent back is a claim the server checks (photomap.parse_ids).
//
// API: window.byolPhotoMap.load(containerId, data, opts), recolour(containerId, data),
// setSelection(containerId, ids), view(containerId).
(() => {
  'use strict';
  if (window.byolPhotoMap) return;
  const MIN_CELL = 36;  // px on screen of a grid cell before its level's thumbnails appear
  const MAX_THUMB = 96;  // px: thumbnails never drawn larger
  const DOT = 2;  // half side of a photo's dot, px

  const decode = (s, T) => {  // little-endian base64 -> a typed array
    const bin = atob(s), u = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    return new T(u.buffer);
  };

  // gradio 6 turns a bubbling input event on a textbox into the component's .change (same value: no change)
  const setBox = (elemId, text) => {
    const host = document.getElementById(elemId);
    const el = host && (host.querySelector('textarea') || host.querySelector('input'));
    if (!el) { console.warn('byolPhotoMap: no textbox #' + elemId); return; }
    el.value = text;
    el.dispatchEvent(new Event('input', {bubbles: true}));
  };

  // even-odd rule, the same arithmetic as app/photomap.py select_in_polygon
  const inPoly = (poly, x, y) => {
    let inside = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const xi = poly[i][0], yi = poly[i][1], xj = poly[j][0], yj = poly[j][1];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  };

  const element = (tag, className, parent) => {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (parent) parent.appendChild(el);
    return el;
  };

  class View {
    constructor(root, opts) {
      this.root = root;
      this.opts = Object.assign({selectionId: 'photomap-selection', openId: 'photomap-open', height: 640}, opts || {});
      root.innerHTML = '';
      const bar = element('div', 'byol-photomap-bar', root);
      this.mode = 'pan';
      const button = (label, fn) => {
        const b = element('button', 'byol-photomap-button', bar);
        b.type = 'button';
        b.textContent = label;
        b.onclick = fn;
        return b;
      };
      this.modeButtons = {};
      for (const [m, label] of [['pan', 'Pan'], ['box', 'Box select'], ['lasso', 'Lasso']])
        this.modeButtons[m] = button(label, () => this.setMode(m));
      button('Reset view', () => { this.fit(); this.redraw(); });
      button('Clear selection', () => this.select(new Set(), true));
      this.status = element('span', 'byol-photomap-status', bar);
      this.legendEl = element('span', 'byol-photomap-legend', bar);
      this.canvas = element('canvas', 'byol-photomap-canvas', root);
      this.canvas.style.height = this.opts.height + 'px';
      this.ctx = this.canvas.getContext('2d');
      this.selected = new Set();
      this.region = null;  // the last box or lasso selected, in map coordinates: {kind, points}
      this.drag = null;
      this.clicks = 0;  // sent with a click: the same photo clicked again is a new value
      this.picks = 0;  // sent with a selection: the same photos selected again are a new value
      this.bind();
      new ResizeObserver(() => this.redraw()).observe(this.canvas);
      this.setMode('pan');
    }

    setMode(m) {
      this.mode = m;
      for (const [k, b] of Object.entries(this.modeButtons)) b.classList.toggle('active', k === m);
      this.canvas.style.cursor = m === 'pan' ? 'grab' : 'crosshair';
    }

    load(d) {
      this.n = d.n;
      this.q = d.q;  // quantisation steps per side: a position is pos / q in [0, 1]
      this.ids = decode(d.ids, Int32Array);
      this.pos = decode(d.pos, Uint16Array);
      this.grids = d.grids;
      this.setColours(d);
      this.thumbs = null;
      if (d.thumbs) {
        const t = d.thumbs;
        this.thumbs = {cell: t.cell, perRow: t.per_row, idx: decode(t.idx, Int32Array), slot: decode(t.slot, Int32Array),
                       level: decode(t.level, Uint8Array), sheets: t.sheets.map(url => {
                         const im = new Image(); im.onload = () => this.redraw(); im.src = url; return im; })};
      }
      const keep = new Set(Array.from(this.ids));
      this.selected = new Set([...this.selected].filter(i => keep.has(i)));
      this.fit();
      this.redraw();
    }

    setColours(d) {  // the colour keys, who gave them and the legend (a whole payload, or colours() alone)
      this.layout = d.layout;
      this.key = decode(d.key, Int16Array);
      this.human = decode(d.human, Uint8Array);
      this.legend = d.legend;
      this.byColour = new Map();  // colour index -> point indices (-1: unlabelled, drawn first)
      for (let i = 0; i < this.n; i++) {
        const k = this.key[i];
        if (!this.byColour.has(k)) this.byColour.set(k, []);
        this.byColour.get(k).push(i);
      }
      this.legendEl.replaceChildren();
      for (const l of this.legend) {
        const s = element('span', '', this.legendEl);
        element('span', 'byol-photomap-swatch', s).style.background = l.colour;
        s.appendChild(document.createTextNode(l.name + ' ' + l.count.toLocaleString()));
      }
    }

    fit() { this.s = 1; this.ox = 0; this.oy = 0; }
    size() {
      const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
      const pad = 40;
      return {w, h, pad, W: Math.max(w - 2 * pad, 1), H: Math.max(h - 2 * pad, 1)};
    }
    // map (u, v in [0, 1], v down) <-> CSS pixels of the canvas
    toScreen(u, v, z) { return [z.pad + this.ox + u * z.W * this.s, z.pad + this.oy + v * z.H * this.s]; }
    toMap(x, y, z) { return [(x - z.pad - this.ox) / (z.W * this.s), (y - z.pad - this.oy) / (z.H * this.s)]; }

    redraw() {
      if (this.pending) return;
      this.pending = requestAnimationFrame(() => { this.pending = 0; this.paint(); });
    }

    paint() {
      const z = this.size(), ctx = this.ctx, dpr = window.devicePixelRatio || 1;
      if (!z.w || !z.h) return;  // in a hidden tab: the ResizeObserver calls again once shown
      if (this.canvas.width !== Math.round(z.w * dpr) || this.canvas.height !== Math.round(z.h * dpr)) {
        this.canvas.width = Math.round(z.w * dpr); this.canvas.height = Math.round(z.h * dpr);
      }
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, z.w, z.h);
      if (!this.n) return;
      const sx = z.W * this.s / this.q, sy = z.H * this.s / this.q, bx = z.pad + this.ox, by = z.pad + this.oy;
      const colour = k => k < 0 ? '#c8c8c8' : this.legend[k].colour;
      // every photo as a dot, unlabelled underneath
      const keys = [...this.byColour.keys()].sort((a, b) => a - b);
      for (const k of keys) {
        ctx.fillStyle = colour(k);
        ctx.beginPath();
        const r = k < 0 ? DOT : DOT + 1;
        for (const i of this.byColour.get(k)) {
          const x = bx + this.pos[2 * i] * sx, y = by + this.pos[2 * i + 1] * sy;
          if (x < -r || y < -r || x > z.w + r || y > z.h + r) continue;
          ctx.rect(x - r, y - r, 2 * r, 2 * r);
        }
        ctx.fill();
      }
      // the sample as thumbnails: the finest level whose grid cell is still MIN_CELL px on screen
      this.drawn = [];
      const t = this.thumbs;
      if (t) {
        const cellPx = g => Math.min(z.W, z.H) * this.s / g;
        let L = 0;
        for (let l = 0; l < this.grids.length; l++) if (cellPx(this.grids[l]) >= MIN_CELL) L = l;
        const side = Math.max(14, Math.min(MAX_THUMB, cellPx(this.grids[L]) * 0.92)), half = side / 2;
        const perSheet = t.perRow * t.perRow;
        for (let j = 0; j < t.idx.length; j++) {
          if (t.level[j] > L) continue;
          const i = t.idx[j], x = bx + this.pos[2 * i] * sx, y = by + this.pos[2 * i + 1] * sy;
          if (x < -half || y < -half || x > z.w + half || y > z.h + half) continue;
          const sheet = t.sheets[Math.floor(t.slot[j] / perSheet)], s = t.slot[j] % perSheet;
          if (!sheet.complete || !sheet.naturalWidth) continue;
          ctx.drawImage(sheet, (s % t.perRow) * t.cell, Math.floor(s / t.perRow) * t.cell, t.cell, t.cell,
                        x - half, y - half, side, side);
          const k = this.key[i];
          if (k >= 0) {
            ctx.strokeStyle = colour(k);
            ctx.lineWidth = this.human[i] ? 4 : 2;
            ctx.globalAlpha = this.human[i] ? 1 : 0.8;
            ctx.strokeRect(x - half, y - half, side, side);
            ctx.globalAlpha = 1;
          }
          if (this.selected.has(this.ids[i])) {
            ctx.strokeStyle = '#111'; ctx.lineWidth = 3;
            ctx.strokeRect(x - half - 3, y - half - 3, side + 6, side + 6);
          }
          this.drawn.push([i, x - half, y - half, side]);
        }
      }
      // selected dots
      if (this.selected.size) {
        ctx.strokeStyle = '#111'; ctx.lineWidth = 1.5; ctx.beginPath();
        for (let i = 0; i < this.n; i++) {
          if (!this.selected.has(this.ids[i])) continue;
          const x = bx + this.pos[2 * i] * sx, y = by + this.pos[2 * i + 1] * sy;
          ctx.rect(x - DOT - 2, y - DOT - 2, 2 * DOT + 4, 2 * DOT + 4);
        }
        ctx.stroke();
      }
      // the region being drawn
      const d = this.drag;
      if (d && (d.kind === 'box' || d.kind === 'lasso')) {
        ctx.setLineDash([5, 4]); ctx.strokeStyle = '#1a56db'; ctx.lineWidth = 1.5;
        ctx.fillStyle = 'rgba(26,86,219,0.08)'; ctx.beginPath();
        if (d.kind === 'box') ctx.rect(d.x0, d.y0, d.x - d.x0, d.y - d.y0);
        else d.path.forEach(([x, y], j) => j ? ctx.lineTo(x, y) : ctx.moveTo(x, y));
        ctx.closePath(); ctx.fill(); ctx.stroke(); ctx.setLineDash([]);
      }
      this.status.textContent = this.n.toLocaleString() + ' photos · ' + this.selected.size.toLocaleString() + ' selected';
    }

    point(e) { const r = this.canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }

    bind() {
      const c = this.canvas;
      c.addEventListener('wheel', e => {
        e.preventDefault();
        const [x, y] = this.point(e), z = this.size();
        const s = Math.min(400, Math.max(0.5, this.s * Math.exp(-e.deltaY * 0.0015)));
        this.ox = x - z.pad - (x - z.pad - this.ox) * s / this.s;
        this.oy = y - z.pad - (y - z.pad - this.oy) * s / this.s;
        this.s = s; this.redraw();
      }, {passive: false});
      c.addEventListener('pointerdown', e => {
        const [x, y] = this.point(e);
        const kind = e.shiftKey ? 'box' : e.altKey ? 'lasso' : this.mode;
        this.drag = {kind, x0: x, y0: y, x, y, ox: this.ox, oy: this.oy, add: e.ctrlKey || e.metaKey, path: [[x, y]], moved: 0};
        c.setPointerCapture(e.pointerId);
        if (kind === 'pan') c.style.cursor = 'grabbing';
        e.preventDefault();
      });
      c.addEventListener('pointermove', e => {
        const d = this.drag; if (!d) return;
        const [x, y] = this.point(e);
        d.moved = Math.max(d.moved, Math.abs(x - d.x0) + Math.abs(y - d.y0));
        d.x = x; d.y = y;
        if (d.kind === 'pan') { this.ox = d.ox + x - d.x0; this.oy = d.oy + y - d.y0; }
        else if (d.kind === 'lasso') d.path.push([x, y]);
        this.redraw();
      });
      const end = () => {
        const d = this.drag; if (!d) return;
        this.drag = null;
        this.canvas.style.cursor = this.mode === 'pan' ? 'grab' : 'crosshair';
        if (d.moved < 4) { this.click(d.x0, d.y0); this.redraw(); return; }
        const z = this.size();
        if (d.kind === 'box') this.selectBox(this.toMap(d.x0, d.y0, z), this.toMap(d.x, d.y, z), d.add);
        else if (d.kind === 'lasso') this.selectPolygon(d.path.map(([x, y]) => this.toMap(x, y, z)), d.add);
        this.redraw();
      };
      c.addEventListener('pointerup', end);
      c.addEventListener('pointercancel', () => { this.drag = null; this.redraw(); });
    }

    // the photos in a box (two corners in map coordinates), as app/photomap.py select_in_box
    selectBox([u0, v0], [u1, v1], add) {
      const ua = Math.min(u0, u1), ub = Math.max(u0, u1), va = Math.min(v0, v1), vb = Math.max(v0, v1);
      const out = add ? new Set(this.selected) : new Set();
      for (let i = 0; i < this.n; i++) {
        const u = this.pos[2 * i] / this.q, v = this.pos[2 * i + 1] / this.q;
        if (u >= ua && u <= ub && v >= va && v <= vb) out.add(this.ids[i]);
      }
      this.region = {kind: 'box', points: [[u0, v0], [u1, v1]]};
      this.select(out, true);
    }

    // the photos inside a closed polygon in map coordinates (a lasso), as app/photomap.py select_in_polygon
    selectPolygon(poly, add) {
      if (poly.length < 3) return;
      let ua = Infinity, ub = -Infinity, va = Infinity, vb = -Infinity;
      for (const [u, v] of poly) { ua = Math.min(ua, u); ub = Math.max(ub, u); va = Math.min(va, v); vb = Math.max(vb, v); }
      const out = add ? new Set(this.selected) : new Set();
      for (let i = 0; i < this.n; i++) {
        const u = this.pos[2 * i] / this.q, v = this.pos[2 * i + 1] / this.q;
        if (u >= ua && u <= ub && v >= va && v <= vb && inPoly(poly, u, v)) out.add(this.ids[i]);
      }
      this.region = {kind: 'lasso', points: poly};
      this.select(out, true);
    }

    // send: tell the server ('n:id,id,...' with a new n each time, so that every selection is a change,
    // even the same photos after the page cleared its selection without the map telling it)
    select(ids, send) {
      this.selected = ids;
      this.lastSelection = [...ids];
      if (send) setBox(this.opts.selectionId, (++this.picks) + ':' + this.lastSelection.join(','));
      this.redraw();
    }

    click(x, y) {  // a thumbnail under the pointer (topmost), else the nearest dot within 8 px
      let hit = -1;
      for (let j = (this.drawn || []).length - 1; j >= 0; j--) {
        const [i, x0, y0, s] = this.drawn[j];
        if (x >= x0 && x <= x0 + s && y >= y0 && y <= y0 + s) { hit = i; break; }
      }
      if (hit < 0) {
        const z = this.size(), sx = z.W * this.s / this.q, sy = z.H * this.s / this.q;
        const bx = z.pad + this.ox, by = z.pad + this.oy;
        let best = 64;
        for (let i = 0; i < this.n; i++) {
          const dx = bx + this.pos[2 * i] * sx - x, dy = by + this.pos[2 * i + 1] * sy - y, d2 = dx * dx + dy * dy;
          if (d2 < best) { best = d2; hit = i; }
        }
      }
      // 'id:n': a click on the same photo again is still a change
      if (hit >= 0) setBox(this.opts.openId, this.ids[hit] + ':' + (++this.clicks));
    }
  }

  const views = {};
  const parse = data => typeof data === 'string' ? JSON.parse(data) : data;
  const given = data => data !== null && data !== undefined && data !== '';
  window.byolPhotoMap = {
    load(containerId, data, opts) {
      const root = document.getElementById(containerId);
      if (!root || !given(data)) return undefined;
      let v = views[containerId];
      if (!v || !document.body.contains(v.canvas)) v = views[containerId] = new View(root, opts);
      v.load(parse(data));
      return v;
    },
    recolour(containerId, data) {  // new colours for the layout shown (ignored for another layout)
      const v = views[containerId];
      if (!v || !given(data)) return false;
      const d = parse(data);
      if (d.layout !== v.layout || d.n !== v.n) return false;
      v.setColours(d);
      v.redraw();
      return true;
    },
    setSelection(containerId, ids) {  // the server chose the selection (e.g. [] after labelling it)
      const v = views[containerId];
      if (v) v.select(new Set((ids || []).map(Number)), false);
    },
    view(containerId) { return views[containerId]; },
  };
})();
