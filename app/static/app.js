// The try-it page: draws or loads a digit, asks every model through the public API,
// and shows their answers side by side. Uses only the endpoints any client uses.
"use strict";

const pad = document.getElementById("pad");
const context = pad.getContext("2d");
const statusLine = document.getElementById("status");
const cards = []; // the model cards on the page, in order: each asks one version
const models = new Map(); // style -> its entry in GET /models

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// ---- the API key, when the service asks for one ----------------------------------------

const keyForm = document.getElementById("key-form");
const KEY_ITEM = "digits-api-key"; // kept for this tab only

// fetch(), with the key the user gave (if any) as X-API-Key.
function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = { ...(options.headers || {}), ...(key ? { "X-API-Key": key } : {}) };
  return fetch(path, { ...options, headers });
}

function askForKey() {
  keyForm.hidden = false;
  setStatus(sessionStorage.getItem(KEY_ITEM) ? "That API key was refused." :
    "This service needs an API key.", true);
  document.getElementById("key").focus();
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, document.getElementById("key").value);
  keyForm.hidden = true;
  setStatus("Draw a digit to start.");
  loadModels();
});

// ---- the model cards -------------------------------------------------------------------

async function loadModels() {
  const response = await api("/models");
  if (response.status === 401) {
    askForKey();
    return;
  }
  const listing = await response.json();
  document.getElementById("models").replaceChildren();
  cards.length = 0;
  models.clear();
  for (const model of listing.models) {
    models.set(model.name, model);
    addCard(model.name, model.version);
  }
}

// A card for one style, showing `version` (its default to start with). Styles that serve
// several versions get a version picker and "Compare" (another card for the same style,
// on another version, beside this one).
function addCard(style, version, after = null) {
  const model = models.get(style);
  const card = document.getElementById("model-card").content.firstElementChild.cloneNode(true);
  card.dataset.style = style;
  card.querySelector(".name").textContent = style;
  const bars = card.querySelector(".bars");
  for (let digit = 0; digit < 10; digit++) {
    const item = document.createElement("li");
    item.innerHTML = `<span>${digit}</span><span class="track"><span class="fill"></span></span>` +
      `<span class="value">&ndash;</span>`;
    bars.append(item);
  }
  if (model.status === "ready") {
    const picker = card.querySelector(".version");
    for (const served of model.served) {
      const names = [...served.labels, ...(served.default ? ["default"] : [])];
      picker.add(new Option(`v${served.version}` +
        (names.length ? ` (${[...new Set(names)].join(", ")})` : ""), served.version));
    }
    picker.disabled = model.served.length < 2;
    picker.addEventListener("change", () => showVersion(card, Number(picker.value)));
    const compare = card.querySelector(".compare");
    compare.hidden = model.served.length < 2;
    compare.addEventListener("click", () => {
      const other = model.served.find((v) => v.version !== Number(card.dataset.version));
      addCard(style, other.version, card);
    });
    showVersion(card, version);
  } else {
    card.classList.add("unavailable");
    card.querySelector(".version").hidden = true;
    card.querySelector(".facts").textContent = `${model.status}: ${model.detail || ""}`;
  }
  const remove = card.querySelector(".remove");
  remove.hidden = after === null;
  remove.addEventListener("click", () => {
    cards.splice(cards.indexOf(card), 1);
    card.remove();
  });
  if (after) {
    after.after(card);
    cards.splice(cards.indexOf(after) + 1, 0, card);
  } else {
    document.getElementById("models").append(card);
    cards.push(card);
  }
  return card;
}

function showVersion(card, version) {
  const style = card.dataset.style;
  const served = models.get(style).served.find((v) => v.version === version);
  card.dataset.version = version;
  card.querySelector(".version").value = version;
  const accuracy = served.metrics.val_accuracy;
  card.querySelector(".facts").textContent =
    `${served.total_params.toLocaleString()} params · ` +
    (accuracy !== undefined ? `${(accuracy * 100).toFixed(2)}% validation · ` : "") +
    `${served.device} (${served.runtime})`;
  card.querySelector(".digit").textContent = "–";
  card.querySelector(".confidence").textContent = "";
  card.querySelector(".preview").removeAttribute("src");
  card.querySelectorAll(".bars li").forEach((item) => {
    item.querySelector(".fill").style.width = "0";
    item.querySelector(".value").textContent = "–";
    item.classList.remove("top");
  });
  card.querySelector(".summary tbody").replaceChildren();
  loadSummary(style, version, card);
}

// What a card is called in the status line and the table: "sequential v2".
function cardName(card) {
  return `${card.dataset.style} v${card.dataset.version}`;
}

function predictPath(card) {
  return `/models/${card.dataset.style}/versions/${card.dataset.version}/predict`;
}

function readyCards() {
  return cards.filter((card) => !card.classList.contains("unavailable"));
}

async function loadSummary(style, version, card) {
  const response = await api(`/models/${style}/versions/${version}/summary`);
  if (!response.ok || card.dataset.version !== String(version)) return;
  const summary = await response.json();
  const body = card.querySelector("tbody");
  for (const layer of summary.layers) {
    const row = body.insertRow();
    // The batch dimension (null) is left out: 26×26×32 reads better in a narrow card.
    const shape = layer.output_shape ? layer.output_shape.slice(1).join("×") : "?";
    const name = row.insertCell();
    name.textContent = layer.name;
    const type = document.createElement("small");
    type.textContent = layer.type;
    name.append(document.createElement("br"), type);
    row.insertCell().textContent = shape;
    row.insertCell().textContent = layer.params.toLocaleString();
  }
  const total = body.insertRow();
  total.insertCell().textContent = "Total";
  total.insertCell().textContent = "";
  total.insertCell().textContent = summary.total_params.toLocaleString();
}

function showPrediction(card, prediction) {
  card.querySelector(".digit").textContent = prediction.digit;
  card.querySelector(".confidence").textContent =
    `${(prediction.confidence * 100).toFixed(1)}% sure`;
  const preview = card.querySelector(".preview");
  preview.src = `data:image/png;base64,${prediction.model_input}`;
  card.querySelectorAll(".bars li").forEach((item, digit) => {
    const probability = prediction.probabilities[digit];
    item.querySelector(".fill").style.width = `${(probability * 100).toFixed(1)}%`;
    item.querySelector(".value").textContent = `${(probability * 100).toFixed(1)}%`;
    item.classList.toggle("top", digit === prediction.digit);
  });
}

// ---- asking the models -----------------------------------------------------------------

// Whether any answer failed, after dealing with it: the key asked for, the error shown,
// and the model list reloaded when a version the page offered has been unloaded meanwhile.
function failedAnswers(answers, fallback) {
  if (answers.some((answer) => answer.status === 401)) {
    askForKey();
    return true;
  }
  const failure = answers.find((answer) => !answer.ok);
  if (!failure) return false;
  setStatus(failure.body.detail || fallback, true);
  if (failure.status === 404) loadModels(); // the service's versions changed
  return true;
}

let latestRequest = 0;

async function classify(blob) {
  const requestId = ++latestRequest;
  setStatus("Asking the models…");
  const answers = await Promise.all(readyCards().map(async (card) => {
    const response = await api(`${predictPath(card)}?debug=true`, {
      method: "POST",
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      body: blob,
    });
    const body = await response.json();
    return { card, ok: response.ok, status: response.status, body };
  }));
  if (requestId !== latestRequest) return; // a newer drawing is on its way
  if (failedAnswers(answers, "The service could not read that image.")) return;
  for (const { card, body } of answers) showPrediction(card, body.predictions[0]);
  setStatus(answers.map(({ card, body }) => `${cardName(card)}: ${body.predictions[0].digit}`)
    .join(" · "));
}

// ---- drawing ---------------------------------------------------------------------------

let drawing = false;

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width),
          (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  context.beginPath();
  context.moveTo(x, y);
  context.lineTo(x + 0.1, y + 0.1);
  context.stroke();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  context.lineTo(x, y);
  context.stroke();
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  // The canvas export is dark strokes on transparent pixels, exactly as apps send them.
  pad.toBlob((blob) => classify(blob), "image/png");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function clearPad() {
  context.clearRect(0, 0, pad.width, pad.height);
  setStatus("Draw a digit to start.");
}

function setUpPen() {
  context.lineWidth = 18;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.strokeStyle = "#111";
}

document.getElementById("clear").addEventListener("click", clearPad);
pad.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") clearPad();
});

// ---- uploading -------------------------------------------------------------------------

// Several files go to each model in one multipart request; each file gets its own row,
// with the digit each model read or the error that file alone got.
async function classifyMany(files) {
  const requestId = ++latestRequest;
  setStatus(`Asking the models about ${files.length} images…`);
  const answers = await Promise.all(readyCards().map(async (card) => {
    const form = new FormData();
    for (const file of files) form.append("file", file, file.name);
    const response = await api(predictPath(card), { method: "POST", body: form });
    return { card, ok: response.ok, status: response.status, body: await response.json() };
  }));
  if (requestId !== latestRequest) return;
  if (failedAnswers(answers, "The service could not read those images.")) return;
  showBatch(files, answers);
  const unread = answers[0].body.predictions.filter((p) => p.error).length;
  setStatus(`${files.length - unread} of ${files.length} images read` +
            (unread ? `; ${unread} could not be read (see the table)` : ""));
}

function showBatch(files, answers) {
  const batch = document.getElementById("batch");
  const head = batch.querySelector("thead tr");
  head.replaceChildren(head.firstElementChild);
  for (const { card } of answers) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = cardName(card);
    head.append(th);
  }
  const body = batch.querySelector("tbody");
  body.replaceChildren();
  files.forEach((file, i) => {
    const row = body.insertRow();
    row.insertCell().textContent = file.name;
    for (const { body: answer } of answers) {
      const prediction = answer.predictions[i];
      const cell = row.insertCell();
      cell.classList.add("answer-cell");
      if (prediction.error) {
        cell.classList.add("failed");
        cell.textContent = `${prediction.error.status}: ${prediction.error.detail}`;
      } else {
        cell.textContent = prediction.digit;
        cell.title = `${(prediction.confidence * 100).toFixed(1)}% sure`;
      }
    }
  });
  batch.hidden = false;
}

function useFiles(files) {
  if (files.length > 1) {
    clearPad();
    classifyMany(files);
  } else {
    useFile(files[0]);
  }
}

function useFile(file) {
  if (!file) return;
  document.getElementById("batch").hidden = true;
  clearPad();
  const image = new Image();
  const url = URL.createObjectURL(file);
  image.onload = () => {
    const scale = Math.min(pad.width / image.width, pad.height / image.height);
    const width = image.width * scale;
    const height = image.height * scale;
    context.drawImage(image, (pad.width - width) / 2, (pad.height - height) / 2, width, height);
    URL.revokeObjectURL(url);
  };
  image.onerror = () => URL.revokeObjectURL(url);
  image.src = url;
  classify(file); // the original file, not the thumbnail: the service does the work
}

document.getElementById("file").addEventListener("change", (event) => {
  useFiles([...event.target.files]);
  event.target.value = "";
});

const dropZone = document.getElementById("drop");
for (const target of [dropZone, pad]) {
  target.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
  target.addEventListener("dragleave", () => dropZone.classList.remove("over"));
  target.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("over");
    useFiles([...event.dataTransfer.files]);
  });
}

setUpPen();
loadModels().catch((error) => setStatus(`Could not reach the service: ${error}`, true));
