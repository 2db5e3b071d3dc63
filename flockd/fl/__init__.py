"""flockd.fl"""
