"""One trial on Ray: the trainable that runs the core's fit() and reports each epoch, a trial on several
workers (Ray Train), and ASHA whose rungs survive an interrupted study."""
