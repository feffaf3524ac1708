// What both composers do with a submit: one multipart POST with the session cookie. Resolves to
// {ok, body} (body is {} when the answer is not JSON), or null when no answer came.
window.composerSend = async function (url, form) {
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form, credentials: "same-origin" });
  } catch (error) {
    return null;
  }
  const body = await response.json().catch(function () { return {}; });
  return { ok: response.ok, body: body };
};
