// The webcam, where the browser offers one (a secure context: HTTPS or localhost): a preview and a
// button that grabs the current frame as a JPEG file, segmented like a dropped image.

export function setUpCamera({ start, capture, stop, video, note }, onFrame, onError) {
  if (!navigator.mediaDevices?.getUserMedia) {
    start.disabled = true;
    note.textContent = "No camera here: browsers offer it to pages served over HTTPS or from localhost.";
    return;
  }
  let stream = null;
  let frames = 0;
  const running = (on) => {
    start.disabled = on;
    capture.disabled = !on;
    stop.disabled = !on;
    video.hidden = !on;
  };
  start.addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      video.srcObject = stream;
      await video.play();
    } catch (error) {
      onError(`The camera could not be started: ${error.message}`);
      return;
    }
    running(true);
    capture.focus();
  });
  capture.addEventListener("click", () => {
    const frame = document.createElement("canvas");
    frame.width = video.videoWidth;
    frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    frame.toBlob((blob) => onFrame(new File([blob], `camera-${++frames}.jpg`, { type: "image/jpeg" })), "image/jpeg", 0.92);
  });
  stop.addEventListener("click", () => {
    stream?.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    running(false);
    start.focus();
  });
}
