// Small DOM helpers shared by the page's modules. Text from the server only ever goes in
// through textContent, never innerHTML: a message's text is text.

export const $ = (id) => document.getElementById(id);

/** A <span> with a class and, optionally, text. */
export function span(className, text) {
  const node = document.createElement("span");
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Parse an event's JSON data; null for anything that is not JSON. */
export function parse(data) {
  try {
    return JSON.parse(data);
  } catch (_) {
    return null;
  }
}
