// chat_server's browser client: native ES modules, no build step. This entry starts the
// app after a login or a restored session; each concern lives in its own module:
//   session.js       login, logout, identity          api.js         requests and the credential
//   stream.js        EventSource and polling          connection.js  the link's state, shown
//   chats.js         the chat list, read markers      conversation.js the open chat, composer
//   search.js        people and message search
//   typing.js        "escribiendo…" both ways         notify.js      title, notifications, sound
//   dates.js, dom.js small shared helpers             events.js      the events between modules

import { on } from "./events.js";
import { begin, handleAuth, isCurrent, restore, showLogin } from "./session.js";
import * as chats from "./chats.js";
import * as conversation from "./conversation.js";
import * as stream from "./stream.js";
import "./notify.js";
import "./search.js";

async function start() {
  const generation = begin();
  try {
    await chats.load();
  } catch (err) {
    if (await handleAuth(err)) return;
  }
  if (!isCurrent(generation)) return;
  // Subscribe from the chat list's newest message: nothing between the two is missed.
  stream.connect(chats.newestSeen());
  const remembered = conversation.remembered();
  if (remembered && chats.get(remembered)) conversation.openChat(remembered);
}

on("login", start);

if (await restore()) await start();
else showLogin();
