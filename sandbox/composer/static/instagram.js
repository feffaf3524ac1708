// The Instagram-like composer: Share opens "Share this post?"; its Share sends one multipart
// fetch to media/configure, then shows "Post shared" or an error toast. Elements are found by
// id, so a renamed aria-label (the renamed_selector fault) breaks the playbook, not the page.
(function () {
  const root = document.body.dataset.root;
  const photo = document.getElementById("photo");
  const caption = document.getElementById("caption");
  const preview = document.getElementById("preview");
  const confirm = document.getElementById("confirm");
  const confirmShare = document.getElementById("confirm-share");
  const shared = document.getElementById("shared");
  const toast = document.getElementById("toast");

  photo.addEventListener("change", function () {
    preview.textContent = "";
    if (photo.files.length === 0) return;
    const img = document.createElement("img");
    img.alt = photo.files[0].name;
    img.src = URL.createObjectURL(photo.files[0]);
    preview.appendChild(img);
  });

  // Both dialogs show what is (being) shared: the photo and the caption.
  function showPost(where) {
    document.getElementById(where + "-caption").textContent = caption.value;
    const box = document.getElementById(where + "-preview");
    box.textContent = "";
    const shown = preview.querySelector("img");
    if (shown) box.appendChild(shown.cloneNode());
  }

  document.getElementById("share").addEventListener("click", function () {
    toast.hidden = true;
    showPost("confirm");
    confirm.hidden = false;
  });
  document.getElementById("confirm-cancel").addEventListener("click", function () {
    confirm.hidden = true;
  });

  confirmShare.addEventListener("click", async function () {
    confirmShare.disabled = true;
    const form = new FormData();
    form.append("caption", caption.value);
    for (const file of photo.files) form.append("photo", file);  // 2+ make a carousel
    const answer = await window.composerSend(root + "/api/v1/media/configure/", form);
    if (answer === null) {
      fail("Something went wrong. Please try again.");
      return;
    }
    const body = answer.body;
    if (answer.ok && body.status === "ok") {
      confirm.hidden = true;
      document.getElementById("shared-link").href = root + "/p/" + body.media.code + "/";
      showPost("shared");
      shared.hidden = false;
      return;
    }
    fail(body.message || "Something went wrong. Please try again.");
  });

  function fail(message) {
    confirm.hidden = true;
    confirmShare.disabled = false;
    toast.textContent = message;
    toast.hidden = false;
  }
})();
