// The page's wiring: the model list, the API key, files from the picker, drag and drop or the
// camera, one segmentation request per image (they share the server's batches), errors in the
// alert region, and the live panel.

import { ApiError, apiKey, getModels, segment } from "./api.js";
import { setUpCamera } from "./camera.js";
import { clearCards, newCard, showFailure, showResult } from "./result.js";
import { startLivePanel } from "./stats.js";

const $ = (id) => document.getElementById(id);
let models = [];

function reportError(message) {
  const line = document.createElement("p");
  line.textContent = message;
  $("errors").append(line);
}

function selectedModel() {
  return models[Number($("model").value)] ?? null;
}

function describeModel() {
  const m = selectedModel();
  const ref = m?.reference;
  $("model-info").textContent = m
    ? `${m.config}: ${m.classes.length} classes, ${m.backend} on ${m.device} (${m.precision}), batches of up to ${m.batching.max_batch_size}` +
      (ref ? `; reference: mIoU ${ref.miou ?? "-"}, ${ref.fps ?? "-"} fps${ref.fps_gpu ? ` on ${ref.fps_gpu}` : ""}` : "")
    : "No model listed.";
}

async function loadModels() {
  const chosen = selectedModel();
  try {
    models = (await getModels()).models;
  } catch (error) {
    models = [];
    reportError(`The served models could not be listed: ${error.message}`);
  }
  const found = models.findIndex((m) => chosen && m.name === chosen.name && m.version === chosen.version);
  $("model").replaceChildren(...models.map((m, i) => new Option(`${m.name} (version ${m.version})`, String(i))));
  $("model").value = String(Math.max(found, 0));
  describeModel();
}

async function segmentOne(file) {
  const card = newCard($("results"), file.name);
  try {
    const result = await segment(file, selectedModel());
    if (!models.length) await loadModels(); // the list was refused before a key was entered
    const model = selectedModel() ?? models.find((m) => m.name === result.model);
    await showResult(card, file, result, model);
  } catch (error) {
    const message = `${file.name}: ${error instanceof ApiError ? error.message : `could not be shown (${error.message})`}`;
    showFailure(card, message);
    reportError(message);
  }
}

async function segmentFiles(files) {
  $("errors").replaceChildren();
  $("results-empty").hidden = true;
  $("clear").hidden = false;
  await Promise.all([...files].map(segmentOne));
}

function setUpInputs() {
  const input = $("files");
  input.addEventListener("change", () => {
    segmentFiles(input.files);
    input.value = ""; // the same file can be chosen again
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    segmentFiles(event.dataTransfer.files);
  });
  // a file dropped beside the zone must not replace the page with the file
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("clear").addEventListener("click", () => {
    clearCards($("results"));
    $("errors").replaceChildren();
    $("results-empty").hidden = false;
    $("clear").hidden = true;
    input.focus();
  });
  const camera = { start: $("camera-start"), capture: $("camera-capture"), stop: $("camera-stop"), video: $("camera-video"), note: $("camera-note") };
  setUpCamera(camera, (file) => segmentFiles([file]), reportError);
}

function setUpSettings() {
  $("api-key").value = apiKey.get();
  $("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set($("api-key").value.trim());
    $("errors").replaceChildren();
    loadModels();
  });
  $("model").addEventListener("change", describeModel);
}

setUpSettings();
setUpInputs();
startLivePanel(selectedModel);
loadModels();
