"""The data stages of wdr-pipe, a folder per job: ``index/`` (inputs -> the store's indexes),
``fetch/`` (URLs -> image shards), ``features/`` (HOG and colour histograms), ``stats/`` (label
statistics); ``configs.py`` holds their settings, ``settings.py`` each command's, and ``runner.py``
runs a stage's shard tasks on dask."""
