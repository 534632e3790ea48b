// The chatd web client: the room list, a room's timeline, search, and the dialogs around
// them. State lives in `state`; the server's frames and REST answers update it and the DOM.

import { ApiError, Session } from './api.js';
import { Live } from './live.js';
import { announce, h, snippet, time, uuidv7 } from './dom.js';

const $ = (id) => document.getElementById(id);

const PAGE = 50;
const TYPING_SEND_EVERY_MS = 3000;
/** The server forwards one typing frame per second per room and typer, and drops the rest. */
const TYPING_SERVER_GAP_MS = 1100;
const TYPING_SHOWN_MS = 5000;
/** Notifications only for messages this fresh (a resume after a long sleep stays quiet). */
const NOTIFY_WITHIN_MS = 120_000;

const state = {
  me: null,
  /** room id → summary as in `GET /v1/rooms`, kept up to date by events and unread pushes. */
  rooms: new Map(),
  /** room id → member user ids, for rooms whose details were loaded. */
  members: new Map(),
  /** user id → {username, display_name}. */
  users: new Map(),
  /** user id → online. */
  online: new Map(),
  /** The open room's timeline (see `newTimeline`). */
  tl: null,
  /** client_msg_id → a message being sent: {room_id, body, status, detail, el}. */
  pending: new Map(),
  /** room id → Map(user id → until when it is shown typing). */
  typing: new Map(),
  /** room id → highest seq we marked read. */
  readSent: new Map(),
  /** The last typing frame: {room_id, at}; `shown` false once a sent message ended it. */
  typingSent: { room_id: null, at: 0, shown: false },
  typingTimer: null,
  /** The message the composer replies to: {message_id, sender_id, body, seq} or null. */
  replyTo: null,
  /** The open thread (see `openThread`) or null. */
  thread: null,
  search: null,
  started: false,
};

const session = new Session(
  (data) => (data ? start() : stop()),
  // A refreshed token renews the open WebSocket in-band (else it closes when the old expires).
  (token) => live.reauth(token),
);
const live = new Live({
  token: () => session.token(),
  prepare: loadRooms,
  onFrame,
  onOpen: flushPending,
  onState: showConnection,
  // Logged out elsewhere, or the session was revoked: back to the login form.
  onSessionEnded: () => session.clear(),
});

// ------------------------------------------------------------------ start and stop

function start() {
  if (state.started) return;
  state.started = true;
  $('auth').hidden = true;
  $('chat').hidden = false;
  showPane('welcome');
  session
    .call('GET', '/v1/users/me')
    .then((me) => {
      state.me = me;
      state.users.set(me.user_id, me);
      $('me-name').textContent = me.display_name;
    })
    .catch(report);
  live.start();
  showNotifyButton();
}

function stop() {
  live.stop();
  state.started = false;
  for (const k of ['rooms', 'members', 'users', 'online', 'pending', 'typing', 'readSent']) state[k].clear();
  state.tl = null;
  state.me = null;
  $('rooms').replaceChildren();
  $('chat').hidden = true;
  $('auth').hidden = false;
  document.title = 'chatd';
  $('auth-username').focus();
}

// ------------------------------------------------------------------ room list

/** Loads the room list (before every connection) and returns the `resume` map. */
async function loadRooms() {
  const rooms = await session.call('GET', '/v1/rooms');
  const seen = new Set();
  for (const r of rooms) {
    seen.add(r.room_id);
    state.rooms.set(r.room_id, { ...state.rooms.get(r.room_id), ...r });
  }
  for (const id of [...state.rooms.keys()]) if (!seen.has(id)) removeRoom(id);
  renderRooms();
  for (const r of rooms) if (r.kind === 'direct' && !state.members.has(r.room_id)) loadMembers(r.room_id).catch(() => {});
  const resume = {};
  for (const r of state.rooms.values()) resume[r.room_id] = r.last_seq;
  if (state.tl && state.tl.newest !== null) resume[state.tl.room_id] = state.tl.newest;
  return resume;
}

let reloadTimer = null;
/** Reloads the list soon (a room appeared, or its newest message was deleted). */
function reloadRoomsSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => loadRooms().catch(report), 300);
}

function removeRoom(id) {
  state.rooms.delete(id);
  if (state.tl?.room_id === id) {
    state.tl = null;
    showPane('welcome');
  }
  renderRooms();
}

function roomName(r) {
  return r?.name || (r?.kind === 'direct' ? 'Direct message' : 'Room');
}

function partnerOf(roomId) {
  const r = state.rooms.get(roomId);
  if (r?.kind !== 'direct') return null;
  return (state.members.get(roomId) || []).find((u) => u !== state.me?.user_id) || null;
}

function renderRooms() {
  const list = $('rooms');
  const rooms = [...state.rooms.values()].sort((a, b) =>
    (b.last_activity_at || '').localeCompare(a.last_activity_at || ''),
  );
  const focused = document.activeElement?.closest?.('#rooms li')?.dataset.roomId;
  list.replaceChildren(...rooms.map(roomItem));
  if (focused) list.querySelector(`li[data-room-id="${focused}"] button`)?.focus();
  $('rooms-empty').hidden = rooms.length > 0;
  const total = rooms.reduce((n, r) => n + (r.unread_count || 0), 0);
  document.title = total ? `(${total}) chatd` : 'chatd';
}

function roomItem(r) {
  const partner = partnerOf(r.room_id);
  const last = r.last_message;
  const unread = r.unread_count || 0;
  return h(
    'li',
    { dataset: { roomId: r.room_id, unread } },
    h(
      'button.room-item',
      {
        type: 'button',
        'aria-current': state.tl?.room_id === r.room_id ? 'true' : null,
        onclick: () => openRoom(r.room_id),
      },
      partner ? dot(partner) : h('span.glyph', { 'aria-hidden': 'true' }, r.kind === 'direct' ? '@' : '#'),
      h(
        'span.room-main',
        {},
        h('span.room-name', {}, roomName(r)),
        h(
          'span.preview',
          {},
          last ? [nameEl(last.sender_id), ': ', last.body] : h('em', {}, 'No messages yet'),
        ),
      ),
      h(
        'span.room-side',
        {},
        last ? time(last.sent_at) : null,
        r.mention_count ? h('span.badge.mention', { title: `${r.mention_count} mentioning you` }, '@', h('span.sr-only', {}, ` ${r.mention_count} mentioning you`)) : null,
        unread ? h('span.badge', {}, String(unread), h('span.sr-only', {}, ' unread')) : null,
      ),
    ),
  );
}

function setUnread(f) {
  const r = state.rooms.get(f.room_id);
  if (!r) return;
  r.unread_count = f.unread_count;
  if (f.mention_count !== undefined) r.mention_count = f.mention_count;
  else if (!f.unread_count) r.mention_count = 0;
  renderRooms();
}

// ------------------------------------------------------------------ people and presence

const lookups = new Map();

/** A span showing a user's display name, filled in once it is known. */
function nameEl(uid) {
  return h('span.name', { dataset: { uid } }, userName(uid));
}

function userName(uid) {
  if (uid === state.me?.user_id) return 'You';
  const u = state.users.get(uid);
  if (u) return u.display_name;
  if (!lookups.has(uid)) {
    lookups.set(
      uid,
      session
        .call('GET', `/v1/users/${uid}`)
        .then((user) => {
          state.users.set(uid, user);
          for (const el of document.querySelectorAll(`.name[data-uid="${uid}"]`)) el.textContent = user.display_name;
        })
        .catch(() => {}),
    );
  }
  return '…';
}

function dot(uid) {
  const online = !!state.online.get(uid);
  return h('span.dot', { dataset: { uid, online }, role: 'img', 'aria-label': online ? 'online' : 'offline' });
}

function setOnline(uid, online) {
  state.online.set(uid, online);
  for (const el of document.querySelectorAll(`.dot[data-uid="${uid}"]`)) {
    el.dataset.online = online;
    el.setAttribute('aria-label', online ? 'online' : 'offline');
  }
  if (state.tl) renderRoomHeader();
}

async function loadMembers(roomId) {
  const room = await session.call('GET', `/v1/rooms/${roomId}`);
  state.members.set(
    roomId,
    room.members.map((m) => m.user_id),
  );
  for (const m of room.members) {
    state.users.set(m.user_id, m);
    state.online.set(m.user_id, m.online);
  }
  if (state.rooms.has(roomId)) state.rooms.set(roomId, { ...state.rooms.get(roomId), ...room, members: undefined });
  renderRooms();
  if (state.tl?.room_id === roomId) renderRoomHeader();
}

// ------------------------------------------------------------------ live frames

function onFrame(f) {
  switch (f.type) {
    case 'event':
      return onEvent(f.room_id, f.event);
    case 'ack':
      return onAck(f);
    case 'error':
      return onFrameError(f);
    case 'unread':
      return setUnread(f);
    case 'typing':
      return onTyping(f);
    case 'presence':
      return setOnline(f.user_id, f.online);
    case 'receipt':
      return onReceipt(f);
  }
}

/**
 * A member read up to `f.seq`: the shown messages in (previous_seq, seq] not theirs have one
 * reader more. Ranges count from the highest seq already seen of that reader (two devices may
 * report overlapping ones).
 */
function onReceipt(f) {
  const tl = state.tl;
  if (tl?.room_id !== f.room_id) return;
  const from = Math.max(f.previous_seq ?? 0, tl.receipts.get(f.user_id) ?? 0);
  if (f.seq <= from) return;
  tl.receipts.set(f.user_id, f.seq);
  for (const el of tl.messages.values()) {
    const seq = Number(el.dataset.seq);
    if (seq > from && seq <= f.seq && el.dataset.sender !== f.user_id) {
      setUnreadBy(el, Number(el.dataset.unreadBy) - 1);
    }
  }
}

/** Shows how many members have not read a message (nothing once everyone has). */
function setUnreadBy(el, n) {
  const count = Math.max(0, n || 0);
  el.dataset.unreadBy = count;
  const badge = el.querySelector('.reads');
  badge.textContent = count ? String(count) : '';
  badge.title = count ? `not read by ${count}` : '';
}

/** Shows a message's reactions: emoji and count, most used first; each toggles ours. */
function setReactions(el, reactions) {
  el.reactions = reactions.filter((r) => r.count > 0);
  el.querySelector('.reactions').replaceChildren(
    ...el.reactions.map((r) =>
      h(
        `button.reaction${r.me ? '.me' : ''}`,
        {
          type: 'button',
          'aria-pressed': String(Boolean(r.me)),
          title: `${r.count} reacted ${r.emoji}`,
          onclick: () => state.tl && react(state.tl.room_id, el, r.emoji, !r.me),
        },
        `${r.emoji} ${r.count}`,
      ),
    ),
  );
}

/** A live reaction change: the emoji's new count (and whether it is now ours). */
function onReaction(el, ev) {
  const me = ev.user_id === state.me?.user_id;
  const list = (el.reactions ?? []).filter((r) => r.emoji !== ev.emoji);
  const old = (el.reactions ?? []).find((r) => r.emoji === ev.emoji);
  const mine = me ? ev.type === 'reaction_added' : Boolean(old?.me);
  list.push({ emoji: ev.emoji, count: ev.count, me: mine });
  list.sort((a, b) => b.count - a.count);
  setReactions(el, list);
}

function onEvent(roomId, ev) {
  const me = state.me?.user_id ?? session.userId;
  const r = state.rooms.get(roomId);
  if (!r) {
    if (!(ev.type === 'member_left' && ev.user_id === me)) reloadRoomsSoon();
  } else {
    summarise(r, ev);
  }
  if (ev.type === 'member_left' && ev.user_id === me) {
    removeRoom(roomId);
    return;
  }
  if (ev.type === 'member_joined' || ev.type === 'member_left') {
    state.members.delete(roomId);
    if (state.tl?.room_id === roomId) loadMembers(roomId).catch(report);
  }
  if (ev.type === 'message_sent') {
    const p = ev.client_msg_id && state.pending.get(ev.client_msg_id);
    if (p && ev.sender_id === me) {
      p.el?.remove();
      state.pending.delete(ev.client_msg_id);
    }
    stopTyping(roomId, ev.sender_id);
    // A replayed message that was deleted since comes without its text: nothing to tell.
    if (ev.sender_id !== me && ev.body !== undefined) notify(roomId, ev);
  }
  if (state.tl?.room_id === roomId) liveEvent(state.tl, ev);
  threadEvent(roomId, ev);
}

/** Applies an event to a room's summary (idempotent: replays are ignored by seq). */
function summarise(r, ev) {
  if (ev.seq <= r.last_seq) return;
  r.last_seq = ev.seq;
  r.last_activity_at = ev.at;
  switch (ev.type) {
    case 'message_sent':
      r.last_message = { message_id: ev.message_id, seq: ev.seq, sender_id: ev.sender_id, body: ev.body, sent_at: ev.at };
      break;
    case 'message_edited':
      if (r.last_message?.message_id === ev.message_id) r.last_message.body = ev.body;
      break;
    case 'message_deleted':
      if (r.last_message?.message_id === ev.message_id) reloadRoomsSoon();
      break;
    case 'member_joined':
      r.member_count += 1;
      break;
    case 'member_left':
      r.member_count -= 1;
      break;
  }
  renderRooms();
}

function onTyping(f) {
  if (f.user_id === state.me?.user_id) return;
  if (!state.typing.has(f.room_id)) state.typing.set(f.room_id, new Map());
  state.typing.get(f.room_id).set(f.user_id, Date.now() + TYPING_SHOWN_MS);
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

function stopTyping(roomId, uid) {
  if (state.typing.get(roomId)?.delete(uid)) renderTyping();
}

function renderTyping() {
  const el = $('typing');
  const now = Date.now();
  const who = [];
  for (const [uid, until] of state.typing.get(state.tl?.room_id) || []) if (until > now) who.push(userName(uid));
  el.textContent = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
}

function showConnection(s) {
  const el = $('conn');
  el.dataset.state = s;
  el.textContent = { online: 'Online', connecting: 'Connecting…', offline: 'Offline, reconnecting…' }[s];
}

// ------------------------------------------------------------------ notifications

function showNotifyButton() {
  const asked = localStorage.getItem('chatd.notify-asked');
  $('notify').hidden = !('Notification' in window) || Notification.permission !== 'default' || !!asked;
}

// Granted or blocked from the browser's own settings: the button follows.
navigator.permissions
  ?.query({ name: 'notifications' })
  .then((status) => status.addEventListener('change', () => state.started && showNotifyButton()))
  .catch(() => {});

$('notify').addEventListener('click', async () => {
  localStorage.setItem('chatd.notify-asked', '1');
  $('notify').hidden = true;
  await Notification.requestPermission();
});

function notify(roomId, ev) {
  if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
  if (Date.now() - Date.parse(ev.at) > NOTIFY_WITHIN_MS) return;
  const n = new Notification(`${userName(ev.sender_id)} in ${roomName(state.rooms.get(roomId))}`, {
    body: ev.body.slice(0, 200),
    tag: roomId,
  });
  n.onclick = () => {
    window.focus();
    openRoom(roomId, { focusSeq: ev.seq });
    n.close();
  };
}

// ------------------------------------------------------------------ panes

/** Shows `welcome`, `room` or `results`; on a phone, anything but `welcome` hides the list. */
function showPane(name) {
  for (const p of ['welcome', 'room', 'results']) $(p).hidden = p !== name;
  $('chat').classList.toggle('open', name !== 'welcome');
  if (name !== 'room') {
    state.tl = null;
    renderRooms();
  }
}

for (const id of ['back', 'results-back']) {
  $(id).addEventListener('click', () => {
    showPane('welcome');
    $('rooms').querySelector('button')?.focus();
  });
}

// ------------------------------------------------------------------ the open room

function newTimeline(roomId) {
  return {
    room_id: roomId,
    /** seq → the entry shown for it (messages and membership lines). */
    entries: new Map(),
    /** message id → its entry. */
    messages: new Map(),
    /** message id → a newer edit or delete seen before the message itself was loaded. */
    later: new Map(),
    /** Reader → highest read seq seen in a `receipt` frame. */
    receipts: new Map(),
    /** message id → a promise of what a reply's quote shows of it (parents not loaded). */
    parents: new Map(),
    oldest: null,
    newest: null,
    hasMore: true,
    chain: Promise.resolve(),
  };
}

/** Runs `fn` after everything queued on the timeline (loads and live events stay ordered). */
function serial(tl, fn) {
  tl.chain = tl.chain.then(fn).catch(report);
  return tl.chain;
}

async function openRoom(roomId, { focusSeq } = {}) {
  if (state.tl?.room_id !== roomId) {
    const tl = newTimeline(roomId);
    showPane('room');
    state.tl = tl;
    $('messages').replaceChildren();
    $('older').hidden = true;
    $('jump').hidden = true;
    renderRoomHeader();
    renderTyping();
    renderReplying();
    renderOutbox();
    renderRooms();
    loadMembers(roomId).catch(report);
    await serial(tl, async () => {
      const page = await session.call('GET', `/v1/rooms/${roomId}/messages?limit=${PAGE}`);
      if (state.tl !== tl) return;
      tl.hasMore = page.has_more;
      addEvents(tl, page.events, 'append');
      scrollToBottom();
    });
    if (focusSeq === undefined) $('compose').focus();
  }
  markRead();
  if (focusSeq !== undefined) await jumpTo(state.tl, focusSeq);
}

/** Loads older pages until `seq` is shown, then scrolls to it and focuses it. */
async function jumpTo(tl, seq) {
  while (state.tl === tl && tl.hasMore && tl.oldest > seq) await loadOlder(tl, 200);
  const el = $('messages').querySelector(`[data-seq="${seq}"]`);
  if (!el) return;
  el.scrollIntoView({ block: 'center' });
  el.classList.remove('flash');
  void el.offsetWidth;
  el.classList.add('flash');
  el.focus({ preventScroll: true });
}

function loadOlder(tl, limit = PAGE) {
  if (tl.loadingOlder) return tl.loadingOlder;
  tl.loadingOlder = serial(tl, async () => {
    if (!tl.hasMore || state.tl !== tl) return;
    const page = await session.call('GET', `/v1/rooms/${tl.room_id}/messages?before_seq=${tl.oldest}&limit=${limit}`);
    if (state.tl !== tl) return;
    tl.hasMore = page.has_more;
    addEvents(tl, page.events, 'prepend');
  }).finally(() => (tl.loadingOlder = null));
  return tl.loadingOlder;
}

function liveEvent(tl, ev) {
  serial(tl, async () => {
    if (state.tl !== tl || ev.seq <= tl.newest) return;
    const follow = nearBottom() || ev.sender_id === state.me?.user_id;
    // A gap (events we have not seen): fetch it so the timeline stays complete.
    while (state.tl === tl && ev.seq > tl.newest + 1) {
      const page = await session.call('GET', `/v1/rooms/${tl.room_id}/messages?after_seq=${tl.newest}&limit=200`);
      if (state.tl !== tl || page.events.length === 0) return;
      addEvents(tl, page.events.filter((e) => e.seq < ev.seq), 'append');
      if (!page.has_more || page.events.at(-1).seq >= ev.seq) break;
    }
    if (state.tl !== tl || ev.seq <= tl.newest) return;
    addEvents(tl, [ev], 'append');
    if (ev.type === 'message_sent' && ev.body !== undefined && ev.sender_id !== state.me?.user_id) {
      announce(`${userName(ev.sender_id)}: ${ev.body}`);
    }
    if (follow) scrollToBottom();
    else if (ev.type === 'message_sent') $('jump').hidden = false;
    markRead();
  });
}

/** Adds events (oldest first) at the end (`append`) or, older than all shown, the start. */
function addEvents(tl, events, where) {
  const list = $('messages');
  const frag = document.createDocumentFragment();
  const scroller = $('scroller');
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  // The items of a page are current as of (at least) its newest event: changes up to there
  // are in their counts already.
  tl.asOf = Math.max(tl.newest ?? 0, ...events.map((e) => e.seq));
  for (const ev of events) {
    if (tl.entries.has(ev.seq)) continue;
    tl.oldest = tl.oldest === null ? ev.seq : Math.min(tl.oldest, ev.seq);
    tl.newest = tl.newest === null ? ev.seq : Math.max(tl.newest, ev.seq);
    const el = eventEl(tl, ev);
    if (!el) continue;
    tl.entries.set(ev.seq, el);
    frag.append(el);
  }
  if (where === 'prepend') {
    list.prepend(frag);
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  } else {
    list.append(frag);
  }
  $('older').hidden = !tl.hasMore;
}

/** The element shown for a room event, or null for edits and deletes (applied in place). */
function eventEl(tl, ev) {
  switch (ev.type) {
    case 'message_sent': {
      const el = messageEl(tl, ev);
      tl.messages.set(ev.message_id, el);
      if (ev.reply_to) countReply(tl, ev.reply_to, 1, ev.seq);
      const later = tl.later.get(ev.message_id);
      if (later) applyChange(el, later);
      return el;
    }
    case 'message_edited':
    case 'message_deleted': {
      const el = tl.messages.get(ev.message_id);
      if (el?.dataset.replyTo && ev.type === 'message_deleted' && !el.classList.contains('deleted')) {
        countReply(tl, el.dataset.replyTo, -1, ev.seq);
      }
      if (el) applyChange(el, ev);
      else if ((tl.later.get(ev.message_id)?.seq ?? 0) < ev.seq && tl.later.get(ev.message_id)?.type !== 'message_deleted') {
        tl.later.set(ev.message_id, ev);
      }
      return null;
    }
    case 'reaction_added':
    case 'reaction_removed': {
      const el = tl.messages.get(ev.message_id);
      // A message's state is current as of when it was shown: older changes are in it.
      if (el && !el.classList.contains('deleted') && ev.seq > Number(el.dataset.stateSeq)) onReaction(el, ev);
      return null;
    }
    case 'room_created':
      return systemEl(ev, [nameEl(ev.created_by), ' created the room']);
    case 'member_joined':
      return systemEl(
        ev,
        ev.invited_by ? [nameEl(ev.invited_by), ' added ', nameEl(ev.user_id)] : [nameEl(ev.user_id), ' joined'],
      );
    case 'member_left':
      return systemEl(ev, [nameEl(ev.user_id), ' left']);
    default:
      return null;
  }
}

function systemEl(ev, parts) {
  return h('li.sys', { dataset: { seq: ev.seq } }, ...parts, ' ', time(ev.at));
}

function messageEl(tl, ev) {
  const mine = ev.sender_id === state.me?.user_id;
  const el = h(
    `li.msg${mine ? '.mine' : ''}`,
    { dataset: { seq: ev.seq, messageId: ev.message_id, sender: ev.sender_id, changed: 0 }, tabIndex: -1 },
    ev.reply_to ? quoteEl(tl, ev.reply_to) : null,
    h(
      'div.meta',
      {},
      nameEl(ev.sender_id),
      ' ',
      time(ev.at),
      h('span.edited', { hidden: true }, ' (edited)'),
      ' ',
      h('span.reads', {}),
    ),
    h('p.body', {}, ev.body),
    h('div.reactions', {}),
    h('button.ghost.replies', { type: 'button', hidden: true, onclick: () => openThread(tl.room_id, ev.message_id) }),
    h(
      'div.tools',
      {},
      h('button.ghost', { type: 'button', onclick: () => startReply(tl, el) }, 'Reply', h('span.sr-only', {}, ' to this message')),
      h('button.ghost.react', { type: 'button', 'aria-expanded': 'false', onclick: () => togglePicker(tl, el) }, 'React'),
      mine ? h('button.ghost', { type: 'button', onclick: () => startEdit(tl, el) }, 'Edit', h('span.sr-only', {}, ' message')) : null,
      mine ? h('button.ghost', { type: 'button', onclick: () => deleteMessage(tl, el) }, 'Delete', h('span.sr-only', {}, ' message')) : null,
    ),
  );
  if (ev.reply_to) el.dataset.replyTo = ev.reply_to;
  el.dataset.stateSeq = tl.asOf ?? ev.seq;
  setUnreadBy(el, ev.unread_by);
  setReactions(el, ev.reactions ?? []);
  setReplyCount(el, ev.reply_count ?? 0);
  return el;
}

// ------------------------------------------------------------------ replies and threads

/** Shows "N replies" under a thread's root (a button opening the thread). */
function setReplyCount(el, n) {
  const count = Math.max(0, n || 0);
  el.dataset.replies = count;
  const b = el.querySelector('.replies');
  if (!b) return;
  b.hidden = count === 0;
  b.textContent = `${count} repl${count === 1 ? 'y' : 'ies'}`;
}

/** What a quote shows of a parent: {seq, sender_id, body, deleted}, from the timeline or the API. */
async function parentOf(tl, id) {
  const el = tl.messages.get(id);
  if (el) {
    return {
      seq: Number(el.dataset.seq),
      sender_id: el.dataset.sender,
      body: el.querySelector('.body').textContent,
      deleted: el.classList.contains('deleted'),
    };
  }
  if (!tl.parents.has(id)) {
    tl.parents.set(
      id,
      session
        .call('GET', `/v1/rooms/${tl.room_id}/messages/${id}/thread?limit=1`)
        .then(({ root }) => ({ seq: root.seq, sender_id: root.sender_id, body: root.body, deleted: root.body === undefined }))
        .catch(() => ({ seq: null, sender_id: null, body: '', deleted: true })),
    );
  }
  return tl.parents.get(id);
}

/** The quoted parent above a reply; a button that jumps to it. */
function quoteEl(tl, parentId) {
  const name = h('span.quote-name', {}, '…');
  const text = h('span.quote-text', {}, '');
  const q = h(
    'button.quote',
    { type: 'button', dataset: { parent: parentId }, onclick: () => jumpToMessage(tl, parentId) },
    h('span.sr-only', {}, 'In reply to '),
    name,
    ': ',
    text,
  );
  parentOf(tl, parentId).then((p) => {
    if (p.sender_id) name.replaceChildren(nameEl(p.sender_id));
    else name.textContent = '';
    text.textContent = p.deleted ? 'Message deleted' : p.body.slice(0, 140);
    q.classList.toggle('deleted', p.deleted);
  });
  return q;
}

async function jumpToMessage(tl, id) {
  const p = await parentOf(tl, id);
  if (p.seq !== null && !p.deleted) await jumpTo(tl, p.seq);
}

/** A new reply counts on its root; a deleted one no longer does. */
function countReply(tl, rootId, delta, seq) {
  const root = tl.messages.get(rootId);
  if (root && seq > Number(root.dataset.stateSeq)) setReplyCount(root, Number(root.dataset.replies) + delta);
}

function startReply(tl, el) {
  // Threads are one level deep: replying to a reply replies to its root.
  const id = el.dataset.replyTo || el.dataset.messageId;
  const target = tl.messages.get(id) || el;
  state.replyTo = { room_id: tl.room_id, message_id: id, sender_id: target.dataset.sender, body: target.querySelector('.body').textContent };
  renderReplying();
  $('compose').focus();
}

function renderReplying() {
  const r = state.replyTo;
  const bar = $('replying');
  bar.hidden = !r || r.room_id !== state.tl?.room_id;
  if (bar.hidden) return;
  $('replying-text').replaceChildren('Replying to ', nameEl(r.sender_id), ': ', r.body.slice(0, 140));
}

function cancelReply() {
  state.replyTo = null;
  renderReplying();
}

$('replying-cancel').addEventListener('click', () => {
  cancelReply();
  $('compose').focus();
});

/** Opens a thread: its root and replies in a dialog, updated live, with its own composer. */
async function openThread(roomId, rootId) {
  const th = { room_id: roomId, root: rootId, ids: new Map(), oldest: null, hasMore: false };
  state.thread = th;
  $('thread-list').replaceChildren();
  $('thread-older').hidden = true;
  if (!$('thread').open) $('thread').showModal();
  $('thread-compose').focus();
  try {
    const page = await session.call('GET', `/v1/rooms/${roomId}/messages/${rootId}/thread?limit=${PAGE}`);
    if (state.thread !== th) return;
    addThreadItems(th, [page.root], 'append');
    addThreadItems(th, page.replies, 'append');
    th.hasMore = page.has_more;
    $('thread-older').hidden = !th.hasMore;
  } catch (err) {
    report(err);
  }
}

async function loadOlderReplies() {
  const th = state.thread;
  if (!th?.hasMore) return;
  const page = await session.call('GET', `/v1/rooms/${th.room_id}/messages/${th.root}/thread?before_seq=${th.oldest}&limit=${PAGE}`);
  if (state.thread !== th) return;
  th.hasMore = page.has_more;
  addThreadItems(th, page.replies, 'prepend');
  $('thread-older').hidden = !th.hasMore;
}

function addThreadItems(th, items, where) {
  const els = [];
  for (const m of items) {
    if (th.ids.has(m.message_id)) continue;
    const root = m.message_id === th.root;
    const el = h(
      `li.msg${m.sender_id === state.me?.user_id ? '.mine' : ''}${root ? '.root' : ''}`,
      { dataset: { seq: m.seq, messageId: m.message_id, changed: m.seq } },
      h('div.meta', {}, nameEl(m.sender_id), ' ', time(m.at), h('span.edited', { hidden: true }, ' (edited)')),
      h('p.body', {}, m.body ?? ''),
    );
    if (m.body === undefined) applyChange(el, { type: 'message_deleted', seq: m.seq + 1 });
    th.ids.set(m.message_id, el);
    if (!root) th.oldest = th.oldest === null ? m.seq : Math.min(th.oldest, m.seq);
    els.push(el);
  }
  const list = $('thread-list');
  if (where === 'prepend') list.firstElementChild?.after(...els);
  else list.append(...els);
  if (where === 'append') list.lastElementChild?.scrollIntoView({ block: 'nearest' });
}

/** A live event for the open thread: a new reply, or an edit or delete of one of its messages. */
function threadEvent(roomId, ev) {
  const th = state.thread;
  if (!th || th.room_id !== roomId) return;
  if (ev.type === 'message_sent' && ev.reply_to === th.root) addThreadItems(th, [ev], 'append');
  else if (ev.type === 'message_edited' || ev.type === 'message_deleted') {
    const el = th.ids.get(ev.message_id);
    if (el) applyChange(el, ev);
  }
}

$('thread-older').addEventListener('click', () => loadOlderReplies().catch(report));
$('thread-close').addEventListener('click', () => $('thread').close());
$('thread').addEventListener('close', () => (state.thread = null));
$('thread-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sendThreadReply();
});
$('thread-compose').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendThreadReply();
  }
});

function sendThreadReply() {
  const th = state.thread;
  const body = $('thread-compose').value.trim();
  if (!th || !body) return;
  $('thread-compose').value = '';
  sendText(th.room_id, body, th.root);
}

// ------------------------------------------------------------------ reactions

const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '🙏'];

async function react(roomId, el, emoji, on) {
  try {
    await session.call(on ? 'PUT' : 'DELETE', `/v1/rooms/${roomId}/messages/${el.dataset.messageId}/reactions/${encodeURIComponent(emoji)}`);
  } catch (err) {
    report(err);
  }
}

/** A row of emoji under the message; picking one reacts with it (or takes it back). */
function togglePicker(tl, el) {
  const button = el.querySelector('.react');
  const open = el.querySelector('.picker');
  if (open) {
    open.remove();
    button.setAttribute('aria-expanded', 'false');
    return;
  }
  const close = () => {
    picker.remove();
    button.setAttribute('aria-expanded', 'false');
    button.focus();
  };
  const picker = h(
    'div.picker',
    { role: 'group', 'aria-label': 'Pick a reaction', onkeydown: (e) => e.key === 'Escape' && close() },
    ...EMOJI.map((emoji) =>
      h(
        'button.ghost',
        {
          type: 'button',
          'aria-label': `React with ${emoji}`,
          onclick: () => {
            const mine = (el.reactions ?? []).find((r) => r.emoji === emoji)?.me;
            react(tl.room_id, el, emoji, !mine);
            close();
          },
        },
        emoji,
      ),
    ),
  );
  el.querySelector('.tools').before(picker);
  button.setAttribute('aria-expanded', 'true');
  picker.querySelector('button').focus();
}

/** Applies an edit or delete to a shown message, unless a newer one was applied already. */
function applyChange(el, ev) {
  if (Number(el.dataset.changed) >= ev.seq || el.classList.contains('deleted')) return;
  el.dataset.changed = ev.seq;
  if (ev.message_id) {
    for (const q of document.querySelectorAll(`.quote[data-parent="${ev.message_id}"]`)) {
      q.querySelector('.quote-text').textContent = ev.type === 'message_deleted' ? 'Message deleted' : ev.body.slice(0, 140);
      q.classList.toggle('deleted', ev.type === 'message_deleted');
    }
    state.tl?.parents.delete(ev.message_id);
  }
  if (ev.type === 'message_deleted') {
    el.classList.add('deleted');
    setReactions(el, []);
    el.querySelector('.body').replaceChildren(h('em', {}, 'Message deleted'));
    el.querySelector('.tools')?.remove();
    el.querySelector('.picker')?.remove();
    el.querySelector('.edit')?.remove();
    el.querySelector('.body').hidden = false;
  } else {
    el.querySelector('.body').textContent = ev.body;
    el.querySelector('.edited').hidden = false;
  }
}

function startEdit(tl, el) {
  if (el.querySelector('.edit')) return;
  const body = el.querySelector('.body');
  const input = h('textarea', { rows: 2, maxLength: 4000, 'aria-label': 'Edit message' });
  input.value = body.textContent;
  const done = () => {
    form.remove();
    body.hidden = false;
    el.focus();
  };
  const form = h(
    'form.edit',
    {
      onsubmit: async (e) => {
        e.preventDefault();
        const text = input.value.trim();
        if (!text) return;
        try {
          await session.call('PATCH', `/v1/rooms/${tl.room_id}/messages/${el.dataset.messageId}`, { body: text });
          done();
        } catch (err) {
          report(err);
        }
      },
    },
    input,
    h('button.primary', { type: 'submit' }, 'Save'),
    h('button.ghost', { type: 'button', onclick: done }, 'Cancel'),
  );
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') done();
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  body.hidden = true;
  body.after(form);
  input.focus();
}

async function deleteMessage(tl, el) {
  if (!confirm('Delete this message?')) return;
  try {
    await session.call('DELETE', `/v1/rooms/${tl.room_id}/messages/${el.dataset.messageId}`);
  } catch (err) {
    report(err);
  }
}

function renderRoomHeader() {
  const tl = state.tl;
  if (!tl) return;
  const r = state.rooms.get(tl.room_id);
  $('room-title').textContent = roomName(r);
  const ids = state.members.get(tl.room_id) || [];
  const sub = $('room-sub');
  const partner = partnerOf(tl.room_id);
  if (partner) {
    sub.replaceChildren(dot(partner), state.online.get(partner) ? ' online' : ' offline');
  } else {
    const people = ids.slice(0, 8).flatMap((u, i) => [i ? ', ' : '', dot(u), ' ', nameEl(u)]);
    const n = r?.member_count ?? ids.length;
    sub.replaceChildren(`${n} member${n === 1 ? '' : 's'}${ids.length ? ': ' : ''}`, ...people, ids.length > 8 ? ', …' : '');
  }
  const group = r?.kind === 'group';
  $('invite').hidden = !group;
  $('leave').hidden = !group;
}

function nearBottom() {
  const s = $('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function scrollToBottom() {
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
  $('jump').hidden = true;
}

/** Moves the read marker to the newest event while the room is open, visible and scrolled down. */
function markRead() {
  const tl = state.tl;
  if (!tl || tl.newest === null || document.visibilityState !== 'visible' || !nearBottom()) return;
  const r = state.rooms.get(tl.room_id);
  if ((state.readSent.get(tl.room_id) ?? 0) >= tl.newest && !r?.unread_count) return;
  state.readSent.set(tl.room_id, tl.newest);
  // Everything we hold is read now. The server pushes a count only when it changes, and the
  // baseline after a reconnect leaves out rooms at 0, so do not wait for a push to say so.
  if (r?.unread_count) setUnread({ room_id: tl.room_id, unread_count: 0 });
  const frame = { type: 'read', room_id: tl.room_id, seq: tl.newest };
  if (!live.send(frame)) session.call('POST', `/v1/rooms/${tl.room_id}/read`, { seq: tl.newest }).catch(report);
}

$('scroller').addEventListener('scroll', () => {
  if (nearBottom()) {
    $('jump').hidden = true;
    markRead();
  }
});
document.addEventListener('visibilitychange', markRead);
$('jump').addEventListener('click', () => {
  scrollToBottom();
  markRead();
});
$('older').addEventListener('click', () => state.tl && loadOlder(state.tl));
new IntersectionObserver(
  (entries) => {
    if (entries.some((e) => e.isIntersecting) && state.tl && state.tl.oldest !== null) loadOlder(state.tl);
  },
  { root: $('scroller') },
).observe($('older'));

// ------------------------------------------------------------------ sending

function send() {
  const tl = state.tl;
  const body = $('compose').value.trim();
  if (!tl || !body) return;
  const replyTo = state.replyTo?.room_id === tl.room_id ? state.replyTo.message_id : undefined;
  $('compose').value = '';
  cancelReply();
  sendText(tl.room_id, body, replyTo);
  scrollToBottom();
}

/** Sends a message (a reply when `replyTo` is a message id); kept in the outbox until confirmed. */
function sendText(roomId, body, replyTo) {
  const id = uuidv7();
  const p = { room_id: roomId, body, reply_to: replyTo, status: 'sending', el: null };
  state.pending.set(id, p);
  // Our message ends the typing indicator the others show: typing again must say so anew.
  state.typingSent.shown = false;
  if (!live.send(sendFrame(id, p))) p.status = 'queued';
  renderOutbox();
}

function sendFrame(id, p) {
  return { type: 'send', room_id: p.room_id, body: p.body, client_msg_id: id, ...(p.reply_to ? { reply_to: p.reply_to } : {}) };
}

/** After (re)connecting: sends again whatever is not confirmed (the server drops repeats). */
function flushPending() {
  for (const [id, p] of state.pending) {
    if (p.status === 'failed') continue;
    p.status = 'sending';
    live.send(sendFrame(id, p));
  }
  renderOutbox();
  markRead();
}

function onAck(f) {
  const p = state.pending.get(f.client_msg_id);
  if (!p) return;
  p.status = 'sent';
  renderOutbox();
}

function onFrameError(f) {
  const p = f.ref && state.pending.get(f.ref);
  if (p) {
    p.status = 'failed';
    p.detail = f.detail;
    renderOutbox();
  } else if (f.code === 'validation_failed' && f.ref === state.tl?.room_id) {
    // A read marker at a seq the server's read model has not caught up with yet (events
    // reach us as soon as they are durable): try again shortly.
    state.readSent.delete(f.ref);
    setTimeout(markRead, 300);
  } else if (f.code === 'room_not_found') {
    reloadRoomsSoon();
  } else {
    console.warn('chatd:', f.code, f.detail);
  }
}

const STATUS = { queued: 'waiting for connection', sending: 'sending…', sent: 'sent' };

/** The open room's unconfirmed messages, below its timeline. */
function renderOutbox() {
  const items = [];
  for (const [id, p] of state.pending) {
    p.el = null;
    if (p.room_id !== state.tl?.room_id) continue;
    p.el = h(
      `li.msg.mine.pending${p.status === 'failed' ? '.failed' : ''}`,
      { dataset: { clientMsgId: id, status: p.status } },
      h('div.meta', {}, 'You ', h('span.status', {}, p.status === 'failed' ? `not sent: ${p.detail}` : STATUS[p.status])),
      h('p.body', {}, p.body),
      p.status === 'failed'
        ? h(
            'div.tools',
            {},
            h('button.ghost', { type: 'button', onclick: () => retry(id) }, 'Retry'),
            h('button.ghost', { type: 'button', onclick: () => discard(id) }, 'Discard'),
          )
        : null,
    );
    items.push(p.el);
  }
  $('outbox').replaceChildren(...items);
}

function retry(id) {
  const p = state.pending.get(id);
  p.status = live.send(sendFrame(id, p)) ? 'sending' : 'queued';
  renderOutbox();
}

function discard(id) {
  state.pending.delete(id);
  renderOutbox();
  $('compose').focus();
}

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
$('compose').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  } else if (e.key === 'Escape' && state.replyTo) {
    cancelReply();
  }
});
$('compose').addEventListener('input', sendTyping);

/** Tells the room we are typing: every few seconds, and again soon after a sent message. */
function sendTyping() {
  clearTimeout(state.typingTimer);
  const tl = state.tl;
  if (!tl || !$('compose').value) return;
  const last = state.typingSent;
  const now = Date.now();
  const fresh = last.room_id !== tl.room_id || !last.shown;
  if (!fresh && now - last.at < TYPING_SEND_EVERY_MS) return;
  // Within the server's gap the frame would be dropped: send it when the gap is over.
  const wait = last.room_id === tl.room_id ? last.at + TYPING_SERVER_GAP_MS - now : 0;
  if (wait > 0) {
    state.typingTimer = setTimeout(sendTyping, wait);
    return;
  }
  if (live.send({ type: 'typing', room_id: tl.room_id })) state.typingSent = { room_id: tl.room_id, at: now, shown: true };
}

// ------------------------------------------------------------------ search

$('search-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const q = $('search-q').value.trim();
  if (q) search(q, null);
});

$('more-hits').addEventListener('click', () => state.search && search(state.search.q, state.search.cursor));

async function search(q, cursor) {
  const params = new URLSearchParams({ q, limit: '20' });
  if (cursor) params.set('cursor', cursor);
  let res;
  try {
    res = await session.call('GET', `/v1/search?${params}`);
  } catch (err) {
    if (err.code !== 'invalid_query') return report(err);
    res = { hits: [], total: 0, next_cursor: null };
  }
  if (!cursor) {
    showPane('results');
    $('hits').replaceChildren();
    $('results-title').textContent = `Search: ${q}`;
  }
  state.search = { q, cursor: res.next_cursor };
  $('results-total').textContent =
    res.total === 0 ? 'No messages found.' : `${res.total} message${res.total === 1 ? '' : 's'} found.`;
  $('hits').append(...res.hits.map(hitEl));
  $('more-hits').hidden = !res.next_cursor;
  if (!cursor) ($('hits').querySelector('button') || $('results-title')).focus();
}

function hitEl(hit) {
  return h(
    'li',
    {},
    h(
      'button.hit',
      { type: 'button', dataset: { roomId: hit.room_id, seq: hit.seq }, onclick: () => openRoom(hit.room_id, { focusSeq: hit.seq }) },
      h('span.meta', {}, h('strong', {}, roomName(state.rooms.get(hit.room_id))), ' · ', nameEl(hit.sender_id), ' ', time(hit.sent_at)),
      h('span.snippet', {}, ...snippet(hit.snippet)),
    ),
  );
}

// ------------------------------------------------------------------ dialogs

let dialogAction = null;

/** Opens the dialog with `fields`; `action(form)` runs on OK and closes it unless it throws. */
function openDialog(title, fields, okLabel, action) {
  $('dialog-title').textContent = title;
  $('dialog-body').replaceChildren(...fields);
  $('dialog-error').textContent = '';
  $('dialog-ok').textContent = okLabel;
  $('dialog-ok').hidden = !action;
  $('dialog-cancel').textContent = action ? 'Cancel' : 'Close';
  dialogAction = action;
  $('dialog').showModal();
  $('dialog-body').querySelector('input, select, button')?.focus();
}

$('dialog-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!dialogAction) return $('dialog').close();
  $('dialog-ok').disabled = true;
  try {
    await dialogAction($('dialog-form'));
    $('dialog').close();
  } catch (err) {
    $('dialog-error').textContent = message(err);
  } finally {
    $('dialog-ok').disabled = false;
  }
});
$('dialog-cancel').addEventListener('click', () => $('dialog').close());

function field(label, input) {
  input.id ||= `f-${input.name}`;
  return h('div.field', {}, h('label', { htmlFor: input.id }, label), input);
}

/** Turns "ana, bo" into user ids (exact usernames, any case). */
async function resolveUsers(text) {
  const names = text.split(/[\s,]+/).filter(Boolean);
  return Promise.all(
    names.map(async (name) => {
      const found = await session.call('GET', `/v1/users?q=${encodeURIComponent(name)}&limit=100`);
      const u = found.find((x) => x.username.toLowerCase() === name.toLowerCase());
      if (!u) throw new Error(`There is no user named ${name}.`);
      state.users.set(u.user_id, u);
      return u.user_id;
    }),
  );
}

const usernamesInput = (name) => h('input', { name, autocomplete: 'off', autocapitalize: 'none', spellcheck: false });

$('new-group').addEventListener('click', () => {
  const name = h('input', { name: 'name', required: true, maxLength: 100 });
  const members = usernamesInput('members');
  const visibility = h(
    'select',
    { name: 'visibility' },
    h('option', { value: 'private' }, 'Private: members invite others'),
    h('option', { value: 'public' }, 'Public: anyone may join'),
  );
  openDialog(
    'New room',
    [field('Name', name), field('Members (usernames, separated by commas)', members), field('Visibility', visibility)],
    'Create',
    async () => {
      const member_ids = await resolveUsers(members.value);
      const room = await session.call('POST', '/v1/rooms', { name: name.value, member_ids, visibility: visibility.value });
      await adopt(room);
    },
  );
});

$('new-direct').addEventListener('click', () => {
  const who = usernamesInput('who');
  openDialog('Message someone', [field('Username', who)], 'Open', async () => {
    const [user_id] = await resolveUsers(who.value);
    if (!user_id) throw new Error('Enter a username.');
    await adopt(await session.call('POST', '/v1/rooms/direct', { user_id }));
  });
});

/** A room the server just returned (created or joined): list it and open it. */
async function adopt(room) {
  const { members, ...summary } = room;
  if (members) {
    state.members.set(room.room_id, members.map((m) => m.user_id));
    for (const m of members) state.users.set(m.user_id, m), state.online.set(m.user_id, m.online);
  }
  state.rooms.set(room.room_id, { ...state.rooms.get(room.room_id), ...summary });
  renderRooms();
  $('dialog').close();
  await openRoom(room.room_id);
}

$('browse').addEventListener('click', () => {
  const q = h('input', { name: 'q', type: 'search', autocomplete: 'off' });
  const list = h('ul.public', { 'aria-live': 'polite' });
  const load = async () => {
    const params = new URLSearchParams({ limit: '50' });
    if (q.value.trim()) params.set('q', q.value.trim());
    const rooms = await session.call('GET', `/v1/rooms/public?${params}`);
    list.replaceChildren(
      ...rooms.map((r) =>
        h(
          'li',
          {},
          h('span', {}, h('strong', {}, roomName(r)), ` · ${r.member_count} member${r.member_count === 1 ? '' : 's'}`),
          h(
            'button',
            {
              type: 'button',
              onclick: async () => {
                try {
                  if (!state.rooms.has(r.room_id)) await session.call('POST', `/v1/rooms/${r.room_id}/join`);
                  await adopt(await session.call('GET', `/v1/rooms/${r.room_id}`));
                } catch (err) {
                  $('dialog-error').textContent = message(err);
                }
              },
            },
            state.rooms.has(r.room_id) ? 'Open' : 'Join',
            h('span.sr-only', {}, ` ${roomName(r)}`),
          ),
        ),
      ),
    );
    if (rooms.length === 0) list.append(h('li.hint', {}, 'No public rooms found.'));
  };
  let t;
  q.addEventListener('input', () => {
    clearTimeout(t);
    t = setTimeout(() => load().catch(report), 250);
  });
  openDialog('Public rooms', [field('Find a room', q), list], 'OK', null);
  load().catch(report);
});

$('invite').addEventListener('click', () => {
  const tl = state.tl;
  if (!tl) return;
  const who = usernamesInput('invitees');
  openDialog(`Invite to ${roomName(state.rooms.get(tl.room_id))}`, [field('Usernames (separated by commas)', who)], 'Invite', async () => {
    const user_ids = await resolveUsers(who.value);
    if (user_ids.length === 0) throw new Error('Enter at least one username.');
    await session.call('POST', `/v1/rooms/${tl.room_id}/members`, { user_ids });
    announce('Invited.');
    loadMembers(tl.room_id).catch(report);
  });
});

$('leave').addEventListener('click', async () => {
  const tl = state.tl;
  if (!tl || !confirm(`Leave ${roomName(state.rooms.get(tl.room_id))}?`)) return;
  try {
    await session.call('DELETE', `/v1/rooms/${tl.room_id}/members/me`);
    removeRoom(tl.room_id);
  } catch (err) {
    report(err);
  }
});

// ------------------------------------------------------------------ log in, register, log out

const authForm = $('auth-form');
for (const radio of authForm.elements.mode) {
  radio.addEventListener('change', () => {
    const register = authForm.elements.mode.value === 'register';
    $('auth-register-only').hidden = !register;
    $('auth-submit').textContent = register ? 'Create account' : 'Log in';
    $('auth-password').autocomplete = register ? 'new-password' : 'current-password';
  });
}

authForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = authForm.elements;
  $('auth-error').textContent = '';
  $('auth-submit').disabled = true;
  try {
    if (f.mode.value === 'register') await session.register(f.username.value.trim(), f.password.value, f.display_name.value.trim());
    else await session.login(f.username.value.trim(), f.password.value);
    f.password.value = '';
  } catch (err) {
    $('auth-error').textContent = message(err);
  } finally {
    $('auth-submit').disabled = false;
  }
});

$('logout').addEventListener('click', () => session.logout());

// ------------------------------------------------------------------ errors

function message(err) {
  if (err instanceof ApiError) {
    return (
      {
        invalid_credentials: 'Wrong username or password.',
        username_taken: 'That username is taken.',
        network: 'The server cannot be reached.',
      }[err.code] || err.message
    );
  }
  return err?.message || String(err);
}

function report(err) {
  if (err instanceof ApiError && err.status === 401) return;
  console.error(err);
  announce(message(err));
}

if (session.userId) start();
else stop();
