"""Reading and writing what the engine works on: volumes with their geometry, label maps with
their sidecar files, dataset folders, and the checks on where a run will write."""
