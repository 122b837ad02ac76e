"""Network pieces shared by methods: the coordinate-wise LSTM, gradient preprocessing, flat parameter views and
their native operators (used by the Meta-LSTM and the learned optimizers)."""
