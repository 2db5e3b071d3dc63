"""flockd.p2p"""
