"""fusedssl.engine"""
