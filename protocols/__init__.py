"""Sans-I/O codecs: RESP2/RESP3, the S3 request model, SigV4, aws-chunked, S3 XML.

Nothing in this package touches a socket, an event loop or a file.
"""
