// The page's own events between modules. Imports go one way (session <- chats <- conversation
// <- stream <- app); a lower module that must tell a higher one announces an event here instead
// of importing it. Events:
//   "login"     a person logged in (app.js starts the app)
//   "logout"    every module drops its state and timers
//   "relogin"   a new credential for the same person (the stream reopens with it)
//   "open"      chat id: the person picked a chat in the list
//   "message"   {message, chat, fresh}: a message, counted in the chat list, for whoever
//               shows it (`fresh`: not heard of before)
//   "presence"  {user_id, online}: someone came or went
//   "seen"      chat: the DM partner read further
//   "typing"    chat id: someone started or stopped typing there
//   "mode"      the connection's mode changed (connection.js)
//   "chats"     the chat list was redrawn

const target = new EventTarget();

export function on(type, listener) {
  target.addEventListener(type, (event) => listener(event.detail));
}

export function emit(type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}
