// The X-like composer: the Post button sends one multipart fetch to CreateTweet, then shows a
// toast saying what happened. Elements are found by id, so a renamed data-testid (the
// renamed_selector fault) breaks the playbook, not the page.
(function () {
  const root = document.body.dataset.root;
  const account = document.body.dataset.account;
  const box = document.getElementById("text");
  const files = document.getElementById("media");
  const button = document.getElementById("post");
  const preview = document.querySelector('[data-testid="attachments"]');
  const toast = document.getElementById("toast");

  function refresh() {
    button.disabled = !box.value.trim() && files.files.length === 0;
  }

  function show(kind, message, link) {
    toast.textContent = message;
    toast.className = kind === "ok" ? "toast" : "toast failed";
    if (link) {
      const view = document.createElement("a");
      view.href = link;
      view.textContent = "View";
      toast.appendChild(view);
    }
    toast.hidden = false;
  }

  // The sent post appears under the composer, as in X's timeline (and in the proof screenshot).
  function sent(text, link) {
    const article = document.createElement("article");
    article.dataset.testid = "tweet";
    const words = document.createElement("p");
    words.dataset.testid = "tweetText";
    words.textContent = text;
    const view = document.createElement("a");
    view.href = link;
    view.textContent = "@" + account + " · just now";
    article.append(view, words);
    document.getElementById("sent").prepend(article);
  }

  box.addEventListener("input", refresh);
  files.addEventListener("change", function () {
    preview.textContent = "";
    for (const file of files.files) {
      const img = document.createElement("img");
      img.alt = file.name;
      img.src = URL.createObjectURL(file);
      preview.appendChild(img);
    }
    refresh();
  });

  button.addEventListener("click", async function () {
    button.disabled = true;
    const form = new FormData();
    form.append("text", box.value);
    for (const file of files.files) form.append("media", file);
    const answer = await window.composerSend(root + "/i/api/graphql/CreateTweet", form);
    if (answer === null) {
      show("failed", "Something went wrong. Try reloading.");
      refresh();
      return;
    }
    const body = answer.body;
    if (answer.ok) {
      const id = body.data.create_tweet.tweet_results.result.rest_id;
      const link = root + "/" + account + "/status/" + id;
      show("ok", "Your post was sent.", link);
      sent(box.value, link);
      box.value = "";
      return;
    }
    const first = (body.errors || [])[0] || {};
    show("failed", first.message || "Something went wrong. Try reloading.");
    refresh();
  });
})();
