// Talking to the server: JSON over fetch, with the session's credential when it has one.
//
// The credential is the login cookie when the server sets one (then the page keeps no token),
// else the token from the login answer, sent as a Bearer header.

let token = null;

export function setToken(value) {
  token = value || null;
}

export function getToken() {
  return token;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init); // a network failure throws a TypeError
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
  return data;
}
