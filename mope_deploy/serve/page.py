"""The search page served at ``GET /``: one self-contained HTML file (no external assets; the server may have no
internet). A text query, or an image query (file picker or drag-and-drop), over images or captions; it posts to
``/search`` and shows the top hits with their scores; images are fetched with the API key (when one is set) and
shown as blob URLs. A 401 opens the API-key box and says so."""

FAVICON_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" '
               b'fill="#2a5db0"/><circle cx="14" cy="14" r="7" fill="none" stroke="#fff" stroke-width="3"/>'
               b'<path d="M19 19l7 7" stroke="#fff" stroke-width="3" stroke-linecap="round"/></svg>')

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mope search</title>
<link rel="icon" href="/favicon.ico" type="image/svg+xml">
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; margin-bottom: .6rem; }
  input[type=text] { flex: 1 1 20rem; padding: .5rem; font-size: 1rem; }
  input[type=number] { width: 4rem; padding: .5rem; }
  select, button { padding: .5rem .8rem; font-size: 1rem; }
  #drop { border: 2px dashed #aaa; border-radius: 6px; padding: .6rem; margin-bottom: 1rem; color: #666;
          display: flex; gap: .8rem; align-items: center; flex-wrap: wrap; }
  #drop.over { border-color: #2a5db0; background: #eef3fb; }
  #preview { max-height: 64px; max-width: 96px; display: none; }
  #status { color: #666; margin-bottom: .5rem; min-height: 1.2em; }
  #status.error { color: #b00; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: .8rem; }
  .hit { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4rem; font-size: .8rem; }
  .hit img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; image-rendering: pixelated; }
  .score { font-weight: bold; }
  .caption { color: #555; overflow-wrap: anywhere; }
  .matched { color: #222; font-style: italic; overflow-wrap: anywhere; }
  details { margin-bottom: 1rem; font-size: .85rem; }
  details.attention { outline: 2px solid #b00; padding: .3rem; }
</style>
</head>
<body>
<h1>mope search</h1>
<form id="form">
  <input id="q" type="text" placeholder="describe an image, e.g. a red star on a striped background">
  <label>search <select id="over"><option value="images">images</option>
    <option value="captions">captions</option></select></label>
  <label>top <input id="k" type="number" value="12" min="1" max="100"></label>
  <button id="go" type="submit">Search</button>
</form>
<div id="drop">
  <span>or query by image: drop one here, or</span>
  <input id="file" type="file" accept="image/*">
  <img id="preview" alt="query image">
  <button id="clear" type="button">clear image</button>
</div>
<details id="keybox"><summary>API key</summary>
  <input id="key" type="password" placeholder="only if the server was started with --api-key-file">
</details>
<div id="status"></div>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
let queryImage = null;            // a data URL while an image query is set
$("key").value = sessionStorage.getItem("mope-key") || "";
function headers() {
  const key = $("key").value.trim();
  sessionStorage.setItem("mope-key", key);
  const h = {"Content-Type": "application/json"};
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}
function say(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }
function askForKey() {
  $("keybox").open = true; $("keybox").className = "attention"; $("key").focus();
  say("401: this server needs an API key: enter it in the API key box above, then search again", true);
}
async function showImage(img, url) {
  const h = headers(); delete h["Content-Type"];
  const r = await fetch(url, {headers: h});
  if (r.ok) { img.src = URL.createObjectURL(await r.blob()); img.dataset.loaded = "1"; }
  else { img.alt = "image unavailable (" + r.status + ")"; }
}
function render(body) {
  for (const hit of body.results) {
    const div = document.createElement("div"); div.className = "hit";
    const img = document.createElement("img"); img.alt = hit.id; img.className = "result-image";
    const score = document.createElement("div"); score.className = "score";
    score.textContent = "#" + hit.rank + "  score " + hit.score.toFixed(3);
    div.append(img, score);
    if (hit.caption !== undefined) {
      const m = document.createElement("div"); m.className = "matched";
      m.textContent = "\u201c" + hit.caption + "\u201d";
      div.append(m);
    }
    const cap = document.createElement("div"); cap.className = "caption";
    cap.textContent = hit.id + (hit.caption === undefined && hit.captions.length ? " \u2014 " + hit.captions[0] : "");
    div.append(cap); $("results").append(div);
    showImage(img, hit.image_url);
  }
}
async function search() {
  const query = queryImage ? {image: queryImage} : {text: $("q").value};
  if (!queryImage && !$("q").value.trim()) { say("type a query, or choose or drop an image", true); return; }
  const t0 = performance.now();
  say("searching...");
  $("results").innerHTML = "";
  let r;
  try {
    r = await fetch("/search", {method: "POST", headers: headers(), body: JSON.stringify(
      Object.assign(query, {k: parseInt($("k").value || "12", 10), over: $("over").value}))});
  } catch (e) { say("request failed: " + e, true); return; }
  if (r.status === 401) { askForKey(); return; }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { say((body.error && body.error.message) || ("HTTP " + r.status), true); return; }
  $("keybox").className = "";
  say(body.results.length + " results in " + Math.round(performance.now() - t0) + " ms" +
      (queryImage ? " (image query)" : "") + (body.truncated ? " (query truncated to the model's context)" : ""));
  render(body);
}
function useFile(file) {
  if (!file || !file.type.startsWith("image/")) { say("not an image file", true); return; }
  const reader = new FileReader();
  reader.onload = () => { queryImage = reader.result; $("preview").src = queryImage;
                          $("preview").style.display = "block"; search(); };
  reader.readAsDataURL(file);
}
$("form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
$("q").addEventListener("input", () => { queryImage = null; $("preview").style.display = "none"; });
$("file").addEventListener("change", () => useFile($("file").files[0]));
$("clear").addEventListener("click", () => { queryImage = null; $("file").value = "";
                                             $("preview").style.display = "none"; say(""); });
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.className = "over"; });
drop.addEventListener("dragleave", () => { drop.className = ""; });
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.className = "";
                                        useFile(ev.dataTransfer.files[0]); });
</script>
</body>
</html>
"""
