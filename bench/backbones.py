"""The four Cityscapes configs the GPU benchmarks measure at 1024x2048, by backbone label.

Its own module so that readers of the results (bench.results_table) need no GPU code.
"""

CONFIGS = {
    "R-18-D8": "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    "R-50-D8": "deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024",
    "R-101-D8": "deeplabv3plus_r101-d8_4xb2-40k_cityscapes-512x1024",
    "R-101-D16-MG124": "deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
}
