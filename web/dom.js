// Small DOM helpers. Text from the server is only ever inserted as text nodes; the one piece
// of markup the server sends (search snippets) is rebuilt from its parts by `snippet`.

/** `h('li.msg', {dataset: {seq: 3}}, 'text', child)`: an element with props and children. */
export function h(tag, props = {}, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(' ');
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k in el && !k.includes('-')) el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const ENTITIES = { '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&#39;': "'", '&#x27;': "'" };

function unescape(s) {
  return s.replace(/&(?:amp|lt|gt|quot|#39|#x27);/g, (m) => ENTITIES[m]);
}

/**
 * A search snippet (HTML-escaped text with `<mark>…</mark>` around matches) as DOM nodes:
 * split on the two tags, unescape the rest and insert it as text, so nothing else the
 * snippet might contain can become markup.
 */
export function snippet(html) {
  const out = [];
  let marked = false;
  for (const part of html.split(/(<mark>|<\/mark>)/)) {
    if (part === '<mark>') marked = true;
    else if (part === '</mark>') marked = false;
    else if (part) out.push(marked ? h('mark', {}, unescape(part)) : document.createTextNode(unescape(part)));
  }
  return out;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** A `<time>` showing the clock time today and the date on other days. */
export function time(iso) {
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return h('time', { dateTime: iso, title: fullFmt.format(d) }, today ? timeFmt.format(d) : dayFmt.format(d));
}

/** A UUIDv7 (time-ordered), as the API recommends for `client_msg_id`. */
export function uuidv7() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let t = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = t % 256;
    t = Math.floor(t / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/** Says `text` to screen readers (the page's polite live region). */
export function announce(text) {
  const region = document.getElementById('announcer');
  region.append(h('p', {}, text));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}
