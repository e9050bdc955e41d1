"""The GCS emulator (gcp-storage-emulator) as tests/multihost starts it.

    python -m tests.multihost.gcs_emulator start --host=127.0.0.1 --port=PORT ...

One addition: object downloads carry `x-goog-generation`, as real GCS sends them. TensorStore's
GCS driver (Orbax's arrays) reads an object's generation from that header to update OCDBT
manifests; without it every checkpoint with more than one array fails with "Malformed
StorageGeneration".
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # noqa: BLE001 - the original handler answers 404 for a missing object
    obj = None
  if obj is not None:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  return _download(request, response, storage, *args, **kwargs)


# Before the server module builds its routing table from objects.download.
objects.download = _download_with_generation

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
