// Keep a job page current while the job runs: poll its status, swap in fresh server-rendered output.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root || root.dataset.finished === "true") return;
  var runs = Number(root.dataset.runs);
  var statusEl = document.getElementById("job-status");

  function refreshBody() {
    return fetch(window.location.href, { headers: { Accept: "text/html" } })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("job");
        if (fresh) root.replaceWith(fresh);
        root = fresh || root;
      });
  }

  function poll() {
    fetch(root.dataset.statusUrl, { headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (job) {
        statusEl = document.getElementById("job-status");
        if (statusEl && statusEl.textContent !== job.status) {
          statusEl.textContent = job.status;
          statusEl.className = "badge status-" + job.status;
        }
        var progress = document.getElementById("job-progress");
        if (progress) { progress.max = job.progress.total || 1; progress.value = job.progress.done; }
        var text = document.getElementById("job-progress-text");
        if (text) text.textContent = job.progress.done + " of " + job.progress.total + " variants";
        var changed = job.runs.length !== runs || job.finished;
        runs = job.runs.length;
        var next = changed ? refreshBody() : Promise.resolve();
        return next.then(function () { if (!job.finished) setTimeout(poll, 1500); });
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 1000);
})();
