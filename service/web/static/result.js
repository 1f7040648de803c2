// One result card per image: the canvas showing the overlay, the mask or the original (radio
// buttons, an opacity slider), the class legend with each class's share of the pixels, the latency
// and batch size of its request, and the palette PNG to download.

import { classCounts, colourMask, palettePng } from "./labels.js";

const VIEW_NAMES = { overlay: "Overlay", mask: "Mask", original: "Original" };
let cardCount = 0;
const downloads = []; // object URLs of the masks, released when the results are cleared

export function newCard(container, fileName) {
  const card = document.getElementById("result-template").content.firstElementChild.cloneNode(true);
  const group = `view-${++cardCount}`;
  card.querySelectorAll(".views input").forEach((radio) => { radio.name = group; });
  card.querySelector(".name").textContent = fileName;
  card.querySelector(".meta").textContent = "Segmenting...";
  card.querySelector(".controls").hidden = true;
  card.querySelector(".legend").hidden = true;
  card.setAttribute("aria-busy", "true");
  container.append(card);
  return card;
}

export function showFailure(card, message) {
  card.classList.add("failed");
  card.removeAttribute("aria-busy");
  card.querySelector(".meta").textContent = message;
  card.querySelector("canvas").hidden = true;
}

export function clearCards(container) {
  downloads.splice(0).forEach((url) => URL.revokeObjectURL(url));
  container.replaceChildren();
}

async function decodeOriginal(file) {
  try {
    return await createImageBitmap(file); // upright, as the service turns it (EXIF orientation)
  } catch {
    return null; // a format this browser cannot show (TIFF, say): the mask alone is shown
  }
}

function fillLegend(tbody, counts, total, classes, palette) {
  const ids = Array.from(counts.keys()).filter((id) => id < classes.length || counts[id] > 0);
  ids.sort((a, b) => counts[b] - counts[a] || a - b);
  tbody.replaceChildren(...ids.map((id) => {
    const row = document.createElement("tr");
    row.dataset.classId = String(id);
    if (!counts[id]) row.className = "absent";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = palette[id] ?? [0, 0, 0];
    swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})`; // CSSOM, which the page's CSP allows
    const cells = [swatch, classes[id] ?? `class ${id}`, `${((100 * counts[id]) / total).toFixed(1)} %`];
    row.append(...cells.map((content) => {
      const cell = document.createElement("td");
      cell.append(content);
      return cell;
    }));
    return row;
  }));
}

export async function showResult(card, file, result, model) {
  const { labels, width, height } = result;
  const classes = model?.classes ?? [];
  const palette = model?.palette ?? [];
  const canvas = card.querySelector("canvas");
  canvas.width = width;
  canvas.height = height;
  const mask = document.createElement("canvas");
  mask.width = width;
  mask.height = height;
  mask.getContext("2d").putImageData(colourMask(labels, width, height, palette), 0, 0);
  const original = await decodeOriginal(file);
  const radios = [...card.querySelectorAll(".views input")];
  const slider = card.querySelector(".opacity input");
  if (!original) {
    radios.forEach((radio) => { radio.disabled = radio.value !== "mask"; radio.checked = radio.value === "mask"; });
    const note = card.querySelector(".note");
    note.textContent = "This browser cannot display the file's format: only the mask is shown.";
    note.hidden = false;
  }
  const context = canvas.getContext("2d");
  const draw = () => {
    const view = radios.find((radio) => radio.checked).value;
    context.clearRect(0, 0, width, height);
    if (view !== "mask") context.drawImage(original, 0, 0, width, height);
    if (view !== "original") {
      context.globalAlpha = view === "overlay" ? slider.value / 100 : 1;
      context.drawImage(mask, 0, 0);
      context.globalAlpha = 1;
    }
    slider.disabled = view !== "overlay";
    canvas.setAttribute("aria-label", `${VIEW_NAMES[view]} of ${file.name}, ${width} by ${height} pixels`);
  };
  radios.forEach((radio) => radio.addEventListener("change", draw));
  slider.addEventListener("input", draw);
  draw();

  fillLegend(card.querySelector("tbody"), classCounts(labels), labels.length, classes, palette);
  const { totalMs, queueMs, inferenceMs, batchSize } = result;
  card.querySelector(".meta").textContent =
    `${width} x ${height} px, ${totalMs.toFixed(1)} ms (queue ${queueMs.toFixed(1)}, inference ${inferenceMs.toFixed(1)}), ` +
    `batch of ${batchSize}, ${result.model}`;
  const link = card.querySelector(".download");
  link.href = URL.createObjectURL(await palettePng(labels, width, height, palette));
  downloads.push(link.href);
  link.download = `${file.name.replace(/\.[^.]*$/, "")}-mask.png`;
  link.hidden = false;
  card.querySelector(".controls").hidden = false;
  card.querySelector(".legend").hidden = false;
  card.removeAttribute("aria-busy");
}
