"""Throughput of writing a dask array through caecodec into zarr on dask.distributed, by number of workers.

    python3 benchmarks/dask_scaling.py --workers 1 2 --size 2048 -q 1     # LocalCluster, 1 then 2 workers
    python3 benchmarks/dask_scaling.py --scheduler tcp://HOST:8786 --size 8192   # an existing cluster

Each worker process loads the model once (caecodec.weights caches per process) before the clock starts;
only the codec's configuration travels in the task graph. The image is a mosaic of the Kodak photos.
Results are appended to docs/dask_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from large_image import kodak_photos, mosaic_region

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "dask_scaling.json"


def warm(quality: int, metric: str) -> int:
    """Load the model in this worker process (what the first chunk would do); the number of models loaded."""
    from caecodec import weights

    weights.load(quality, metric)
    return len(weights._loaded)


def write(client, image: np.ndarray, path: Path, quality: int, chunk: int) -> float:
    """Seconds to write the image from a dask array into a zarr 3 array with the caecodec serializer."""
    import dask
    import dask.array as da
    import zarr

    from caecodec import CAECodec

    client.run(warm, quality, "mse")
    source = client.persist(da.from_array(image, chunks=(chunk, chunk, 3)))  # data already on the workers
    target = zarr.create_array(path, shape=image.shape, chunks=(chunk, chunk, 3), dtype="uint8",
                               serializer=CAECodec(quality), compressors=None, overwrite=True)
    start = time.perf_counter()
    with dask.config.set({"array.chunk-size": f"{chunk * chunk * 3}B"}):  # see the note in docs/large-images.md
        da.to_zarr(source, target)
    return time.perf_counter() - start


def main() -> None:
    from dask.distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes to measure")
    parser.add_argument("--scheduler", help="address of a running dask scheduler (instead of LocalCluster)")
    parser.add_argument("--size", type=int, default=2048, help="image edge in pixels")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("-q", "--quality", type=int, default=1)
    args = parser.parse_args()
    image = mosaic_region(kodak_photos(), slice(0, args.size), slice(0, args.size))
    mpix = image.shape[0] * image.shape[1] / 1e6
    runs = []
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        if args.scheduler:
            with Client(args.scheduler) as client:
                seconds = write(client, image, Path(folder) / "a.zarr", args.quality, args.chunk)
                runs.append({"workers": len(client.scheduler_info()["workers"]), "seconds": round(seconds, 1)})
        for workers in [] if args.scheduler else args.workers:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                seconds = write(client, image, Path(folder) / "a.zarr", args.quality, args.chunk)
            runs.append({"workers": workers, "seconds": round(seconds, 1)})
    for run in runs:
        run["mpix_per_s"] = round(mpix / run["seconds"], 3)
    from caecodec.weights import latest_version

    result = {"image": f"Kodak mosaic {args.size}x{args.size}", "chunk": args.chunk, "quality": args.quality,
              "weights": f"bundled v{latest_version()}", "threads_per_worker": 1, "runs": runs,
              "command": " ".join(["python3", "benchmarks/dask_scaling.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=1))
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(history + [result], indent=1) + "\n")


if __name__ == "__main__":
    main()
