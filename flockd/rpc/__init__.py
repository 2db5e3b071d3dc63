"""flockd.rpc"""
