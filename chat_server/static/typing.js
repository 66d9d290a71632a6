// "escribiendo…": telling a DM's partner that the person types, and showing who types.
//
// State: when this page last said so per chat (at most every SEND_EVERY_MS), and per chat the
// partner typing now, forgotten SHOW_FOR_MS after their last notice or at once when their
// message arrives. Announces "typing" with the chat id whenever that changes.

import { api } from "./api.js";
import { emit, on } from "./events.js";
import { me } from "./session.js";

const SEND_EVERY_MS = 3000; // at most one notice per chat this often while typing
const SHOW_FOR_MS = 5000; // "escribiendo…" goes after this long without a new notice

let sentAt = new Map(); // chat id -> when we last said we type there
let typists = new Map(); // chat id -> {user_id, username, timer}

on("logout", () => {
  for (const typist of typists.values()) clearTimeout(typist.timer);
  typists = new Map();
  sentAt = new Map();
});

// Their message ends their typing; ours lets the next keystroke say so again at once.
on("message", ({ message }) => {
  if (message.sender_id === me().id) sentAt.delete(message.chat_id);
  else if (typists.get(message.chat_id)?.user_id === message.sender_id) forget(message.chat_id);
});

/** The person typed in a chat: tell its DM partner, unless we did in the last 3 s. */
export function typed(chat) {
  if (!chat || chat.type !== "dm") return; // General is everyone's: the server tells no one
  const now = Date.now();
  if (now - (sentAt.get(chat.id) || 0) < SEND_EVERY_MS) return;
  sentAt.set(chat.id, now);
  api("POST", `/api/chats/${chat.id}/typing`).catch(() => {
    // a hint, not a message: a lost or refused notice is not worth telling anyone about
  });
}

/** `event: typing` from the stream. */
export function heard(notice) {
  if (!notice || notice.user_id === me().id) return;
  const previous = typists.get(notice.chat_id);
  if (previous) clearTimeout(previous.timer);
  const timer = setTimeout(() => forget(notice.chat_id), SHOW_FOR_MS);
  typists.set(notice.chat_id, { user_id: notice.user_id, username: notice.username, timer });
  if (!previous) emit("typing", notice.chat_id);
}

function forget(chatId) {
  const typist = typists.get(chatId);
  if (!typist) return;
  clearTimeout(typist.timer);
  typists.delete(chatId);
  emit("typing", chatId);
}

/** Whether someone else is typing in the chat now. */
export function isTyping(chatId) {
  return typists.has(chatId);
}
