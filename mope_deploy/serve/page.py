"""The search page served at ``GET /``: one self-contained HTML file (no external assets; the server may have no
internet). It posts to ``/search`` and shows the top images with their scores; images are fetched with the API
key (when one is set) and shown as blob URLs."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mope search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; margin-bottom: 1rem; }
  input[type=text] { flex: 1 1 20rem; padding: .5rem; font-size: 1rem; }
  input[type=number] { width: 4rem; padding: .5rem; }
  button { padding: .5rem 1rem; font-size: 1rem; }
  #status { color: #666; margin-bottom: .5rem; min-height: 1.2em; }
  #status.error { color: #b00; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: .8rem; }
  .hit { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4rem; font-size: .8rem; }
  .hit img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; image-rendering: pixelated; }
  .score { font-weight: bold; }
  .caption { color: #555; overflow-wrap: anywhere; }
  details { margin-bottom: 1rem; font-size: .85rem; }
</style>
</head>
<body>
<h1>mope search</h1>
<form id="form">
  <input id="q" type="text" placeholder="describe an image, e.g. a red star on a striped background" required>
  <label>top <input id="k" type="number" value="12" min="1" max="100"></label>
  <button id="go" type="submit">Search</button>
</form>
<details><summary>API key</summary>
  <input id="key" type="password" placeholder="only if the server was started with --api-key-file">
</details>
<div id="status"></div>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
$("key").value = sessionStorage.getItem("mope-key") || "";
function headers() {
  const key = $("key").value.trim();
  sessionStorage.setItem("mope-key", key);
  const h = {"Content-Type": "application/json"};
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}
function say(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }
async function showImage(img, url) {
  const h = headers(); delete h["Content-Type"];
  const r = await fetch(url, {headers: h});
  if (r.ok) { img.src = URL.createObjectURL(await r.blob()); img.dataset.loaded = "1"; }
  else { img.alt = "image unavailable (" + r.status + ")"; }
}
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const t0 = performance.now();
  say("searching...");
  $("results").innerHTML = "";
  let r;
  try {
    r = await fetch("/search", {method: "POST", headers: headers(),
      body: JSON.stringify({text: $("q").value, k: parseInt($("k").value || "12", 10)})});
  } catch (e) { say("request failed: " + e, true); return; }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { say((body.error && body.error.message) || ("HTTP " + r.status), true); return; }
  say(body.results.length + " results in " + Math.round(performance.now() - t0) + " ms");
  for (const hit of body.results) {
    const div = document.createElement("div"); div.className = "hit";
    const img = document.createElement("img"); img.alt = hit.id; img.className = "result-image";
    const score = document.createElement("div"); score.className = "score";
    score.textContent = "#" + hit.rank + "  score " + hit.score.toFixed(3);
    const cap = document.createElement("div"); cap.className = "caption";
    cap.textContent = hit.id + (hit.captions.length ? " — " + hit.captions[0] : "");
    div.append(img, score, cap); $("results").append(div);
    showImage(img, hit.image_url);
  }
});
</script>
</body>
</html>
"""
