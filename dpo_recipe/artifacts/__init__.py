"""What a finished run leaves behind: metrics, the adapter and its files, charts, and the model, dataset and
export cards rendered from them (``cards/``). Read by the Hub publish step and by people."""
