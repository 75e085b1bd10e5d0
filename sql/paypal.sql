-- PayPal (PROVIDERS.md §2): offline verification with payments.verify_paypal, then
-- deliveries through payments.ingest with a seeded certificate.  Keys, certificates and
-- signatures are our own test data, made once with the openssl CLI by
-- regress/fixtures/paypal-make.sh (the PEMs below are regress/fixtures/paypal-*.pem; the
-- CRC-32 values come from gzip, independent of the extension's zlib call).  No network:
-- URLs off the allowlist are refused before any fetch, the one fetch tried goes to a
-- closed local port.  Fetching, chains and expiry are covered by regress/e2e/paypal.test.mjs.
\set SHOW_CONTEXT never

CREATE TEMP TABLE pem (name text PRIMARY KEY, pem text NOT NULL);
INSERT INTO pem VALUES ('cert', $pem$-----BEGIN CERTIFICATE-----
MIIDcTCCAlmgAwIBAgIUVVef7i0lMcC9JkD7SAiitZcf/cswDQYJKoZIhvcNAQEL
BQAwLjEsMCoGA1UEAwwjbWVzc2FnZXZlcmlmaWNhdGlvbmNlcnRzLnBheXBhbC5j
b20wIBcNMjYxMTIyMDQwNDM4WhgPMjEyNjEwMjkwNDA0MzhaMC4xLDAqBgNVBAMM
I21lc3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMIIBIjANBgkqhkiG
9w0BAQEFAAOCAQ8AMIIBCgKCAQEAor/YeUuZgc4anFzq3zSy3c6tHpbfK3P4rHBR
/jtl1D+qtcAltqIuTuw1psKEkna8B/lgV1Qo5vEpGsa2+6sC3zPWeRx2R7Tgmy/u
DhdO7xC5nK/ISZBYCvqwj8Xc5waV6wrbKWqPlZLUKpckddZRF/iFqc0iddYSM+2P
KjMyxDFOck31K2nXljbknQS9GWTYdXHPgqBORtnmFFYKG0uzkO+U5speH3hCGNvj
+D2Rx3CXNqxYXQtUy9/2graFuCrDt83iys2RE76Yt7+uagQO77858y7plxslw5Jd
/62cPa0ulZpBCbiHlt59IntbSUyDEkzBPIJSCIy02ctMAcTh1wIDAQABo4GEMIGB
MB0GA1UdDgQWBBTEAscLyUSsnxyxD2yrPDueJTLY+DAfBgNVHSMEGDAWgBTEAscL
yUSsnxyxD2yrPDueJTLY+DAPBgNVHRMBAf8EBTADAQH/MC4GA1UdEQQnMCWCI21l
c3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMA0GCSqGSIb3DQEBCwUA
A4IBAQCEzqIC/MB7mWfw0JM3FquVhWAAqInXoaDZmAwTUDpGy6ZjYg4RXzmIYPu9
xDZh3r5a5HQyKWXldHdxvCRUyN+mVd2PyXuKvckTw5R6yqHHtq4OrK2O8Up5XGoS
Ntsf+OMHTD57WUA57WGpkj1pToSAMAzR8I0oHLg2RFXYPhI1XMaoQezIaHyTKyj+
Qd61H/VtUKbTNbMQDairJr3dtZfzeqgyHT1+Clptoz+p2/SSp3HwmBQw+6y4gexf
hTNuJcLoT7MGKab/M2XKWgL/gdUVeOzMGFWGSyp+mgF+17CwqUgqu4T8Vxp9Ni6J
8Jpj9vGPdE6A0aBlTqx4mLrL2kX1
-----END CERTIFICATE-----
$pem$);
-- another key, same name
INSERT INTO pem VALUES ('other', $pem$-----BEGIN CERTIFICATE-----
MIIDcTCCAlmgAwIBAgIUUwhXoj6mISSlVxNRIgnQY5lt/XIwDQYJKoZIhvcNAQEL
BQAwLjEsMCoGA1UEAwwjbWVzc2FnZXZlcmlmaWNhdGlvbmNlcnRzLnBheXBhbC5j
b20wIBcNMjYxMTIyMDQwNDM5WhgPMjEyNjEwMjkwNDA0MzlaMC4xLDAqBgNVBAMM
I21lc3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMIIBIjANBgkqhkiG
9w0BAQEFAAOCAQ8AMIIBCgKCAQEAkmtiH4cAvMXdHyB/ISMAYTfzOyuOFvkT71ka
YQmVin20hOYBOCNV7nJ9nIWlXGuuzzxcpUj6wKcsAVG8SO1210Lb4GY7UOT39vZZ
8Omg5Ul4pYCz/oRpseudftP/rbUy2KS60n5gLFAEOBmYhW+Jg/xwbV7rbRoPxY4x
QhCUVhdWy8/lNl3hfQCZJDOK1xtFfig2fvZFFeyhKBHi3F6PUSnOOC495/MKViHA
OSmSvJiT0G7FWsDZ0dx0t4EJNLwa9KQGE/Zdf75YLiVblTfh7oSdD/wFcuPgFiw3
JbgUVimdmFrj8raR3oaeL26XAO5smibA3OvLEXWncLSHePAdWwIDAQABo4GEMIGB
MB0GA1UdDgQWBBQ5B0T7078toCktHeM708zbuCAmAzAfBgNVHSMEGDAWgBQ5B0T7
078toCktHeM708zbuCAmAzAPBgNVHRMBAf8EBTADAQH/MC4GA1UdEQQnMCWCI21l
c3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMA0GCSqGSIb3DQEBCwUA
A4IBAQA3BlJ89LYHq22ndrP78M02tASB/2EDQTI/wzi0/lgK0sgtP3lRkuwdJ10N
Nwc088b7ymRht323aQOv5tzMldSL4NFCB1vWTmXqFOsI2GqLh6jJtJyuKLVJUKAx
GDP+NjydEMyfAAEcassa2klDOFCaDY5+Y9cHuhCOwYCPLOCRzWFL0MxWGhhsyJYE
txB2sZR8F+32KiDCTj/Std0WhenI1xC1iWY9i3o5CK3uBAvz8R6mCGlIGMfHkq/h
7XQicxPkqDapDc72+mSYJRYGtRCWgQdx1Ix9ESRuW3Yf3lsav9sfiGOE2NC9/+Z3
M68GhmD/ku5G6spCn8ryxJaTcckp
-----END CERTIFICATE-----
$pem$);
-- an EC (P-256) key and a 1024-bit RSA key
INSERT INTO pem VALUES ('ec', $pem$-----BEGIN CERTIFICATE-----
MIIB5TCCAYugAwIBAgIUfJGUenUDKm0pwEdJdBw4bl+SA2kwCgYIKoZIzj0EAwIw
LjEsMCoGA1UEAwwjbWVzc2FnZXZlcmlmaWNhdGlvbmNlcnRzLnBheXBhbC5jb20w
IBcNMjYxMTIyMDQwNDM5WhgPMjEyNjEwMjkwNDA0MzlaMC4xLDAqBgNVBAMMI21l
c3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEO+EYwaCgOD5CPTnbTNwac0t5b8g9s17DjN3tbnCe0GieSpWv
qS1jN6FMsIa4GultM9FaxJMPVdvD1sj8NAo1G6OBhDCBgTAdBgNVHQ4EFgQUiYxN
9gZYP1jZox8+BIJhvMruz9cwHwYDVR0jBBgwFoAUiYxN9gZYP1jZox8+BIJhvMru
z9cwDwYDVR0TAQH/BAUwAwEB/zAuBgNVHREEJzAlgiNtZXNzYWdldmVyaWZpY2F0
aW9uY2VydHMucGF5cGFsLmNvbTAKBggqhkjOPQQDAgNIADBFAiEAhr7Lt94aOhSx
NnJj4X5LN0+wotbq+Oh58/gvV51kNe4CICP2ClXcalai3/jogyfCdrQVM0/cBAld
3HPFWiQDwdb4
-----END CERTIFICATE-----
$pem$);
INSERT INTO pem VALUES ('rsa1024', $pem$-----BEGIN CERTIFICATE-----
MIICbDCCAdWgAwIBAgIUO0lBFN9na0COUzL/7IdFXKKXbsMwDQYJKoZIhvcNAQEL
BQAwLjEsMCoGA1UEAwwjbWVzc2FnZXZlcmlmaWNhdGlvbmNlcnRzLnBheXBhbC5j
b20wIBcNMjYxMTIyMDQwNDM5WhgPMjEyNjEwMjkwNDA0MzlaMC4xLDAqBgNVBAMM
I21lc3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMIGfMA0GCSqGSIb3
DQEBAQUAA4GNADCBiQKBgQC5o+QRSs/Bba1CAFLUejR4rPlyBvb/kUUpoYpdxYsD
xa5WesEQy9wPjob8u5uqOfPkDiA9BHLLb05wRKdFhPgFFn5NCU9/Jqk3BqW6HZcD
6ngVpia286CsMIwpwy7YU1BIhrTdT6Wt4oCMc6MqkRJOnXn5LW3GsvVWrPDJo+ac
6wIDAQABo4GEMIGBMB0GA1UdDgQWBBR71RxDGsT/eqPerc+L5qAdYyGl4DAfBgNV
HSMEGDAWgBR71RxDGsT/eqPerc+L5qAdYyGl4DAPBgNVHRMBAf8EBTADAQH/MC4G
A1UdEQQnMCWCI21lc3NhZ2V2ZXJpZmljYXRpb25jZXJ0cy5wYXlwYWwuY29tMA0G
CSqGSIb3DQEBCwUAA4GBAC/hu30LADKevLD4pfkNwDtPSnKox7Wla64x0/1INlyc
4wJwdWVN3qIqnOQgyGR0W1SjD2v8/NKaMQiDZtC9qhs61KwI7lvH/HOm4LRyyAtv
Obl+/pNILzEmDb51BXVsESnQRI+vjOgW5u8GenoHRi0sBlyaaGZ+DiqTZIWkk55t
-----END CERTIFICATE-----
$pem$);
SELECT pem AS cert FROM pem WHERE name = 'cert' \gset
SELECT pem AS other FROM pem WHERE name = 'other' \gset
SELECT pem AS ec FROM pem WHERE name = 'ec' \gset
SELECT pem AS rsa1024 FROM pem WHERE name = 'rsa1024' \gset

\set wid '8PT597110X687430LKGECATA'
-- body 1: CRC-32 3418381809, above 2^31
\set b1 '{"id":"WH-2WR32451HC0233532-67976317FL4071431","event_version":"1.0","create_time":"2024-08-02T19:33:35.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed for $ 30.0 USD","resource":{"id":"12A34567BC123456S","amount":{"currency_code":"USD","value":"30.00"},"invoice_id":"INV-1001","status":"COMPLETED"}}'
\set tid1 'b8e3a5d0-5106-11ef-84e2-f38df3f70683'
\set time1 '2024-08-02T19:34:57Z'
-- signs b8e3a5d0-5106-11ef-84e2-f38df3f70683|2024-08-02T19:34:57Z|8PT597110X687430LKGECATA|3418381809
\set s1 'by/uqEShGXvA+FRutZwjPzP68gQIhgg/DZXOCceZOmNOnbvdrLvsDxf6aL4YKWTlr8NA8wYTxVxVZ1x0auKGowjyDyc2GLpJIFn5CjoNQo5kpU1tOsj3KgvcQwxVvhAe6RYZk8G8Y2l/vZ/aJs15sHXlLe0qvvEDnfwPNDr1OLFh4FqqF20LmAAOutiGacYZHrEIHYboc7ToKsYDaerCEVMbMLW6Ogd5X4rM8nwVQbu3iLuaLKsiusb6uLE1hjODl2p6HkKcAbCw6/Tkzqt+IY0MxHYTv3Iu5+f9duKC8yJFFkZ/wC9Qts/8Q5PjbZ7OpucAKNEHkhOc9uA5k0jAhw=='
-- signs the same with the CRC written as a signed 32-bit integer, -876585487
\set s1neg 'Ucyz4Yxa4hbY8ywjwCLy0bT2dqJgcmSI2AIzlCJdWecTvdulOs0wMFQW0Xq7lvzsnlsuULrx0zntF0ZAVwoAv+swCcb0nxfOudxuCnFQp58yoWQdsRFzw/wnlb6doIbG2HIsyRYEGGXJw4YeB0FaKF1nc/CLpfyL3NAx1r6pGZB74fbTi0aPSvVwl2BkZPpyE7edGVjNtyV9kwoh8Ay3Tuxn9F7upedkM/jI+54uSXh41GY2EAUkcY+j5keiEiDBtaBgEcJVzo9aIJcaIVjULRv+OrR2vw2Y/EIRxRDUXQpybLcmgV3vDs6s0sJb/+W/mdExxPzu3Bs324iLGZ9iyg=='
-- PayPal's retry of body 1: a new transmission
\set tid2 'c1a0f6e0-5106-11ef-9a44-1d2b8c0e7a11'
\set time2 '2024-08-02T20:04:57Z'
\set s1b 'FjygV03Xye2vQKSEeHnyf+fvuewsuoSJaJtOVwy268Of7cyWKZzAFj699qAlvBHMVfYrVu5zVdyhEu0VaqUilB/MBIzlWNRM2R1iEMbFSK9zfu+crGf+ueqJ/41iQ+MxhJ3LslcDGvqmKt4kX6lczW0ob2cSe/y9M00k6cj0+B2jsBeLuY+N9Epqpc61aiou+3zQ0J9tJxtlFYxmoW2ZZ4j0UNYcTAh2bZsVm4DCLqn+TCI38jYURxOUZJMYvDBVZXsylNpjnNJnFFQnbcognOuMIoHY5kQLuZIdAEKKdgAu5eHD82hwctdrnujpVGkKfEwu0RvbtBIW6iDUyJs4yw=='
-- body 2: CRC-32 1919421121, below 2^31, with multi-byte UTF-8
\set b2 '{"id":"WH-7Y7254563A4550640-11V21858068371052","event_version":"1.0","create_time":"2024-08-02T19:40:02.517Z","resource_type":"checkout-order","resource_version":"2.0","event_type":"CHECKOUT.ORDER.APPROVED","summary":"An order has been approved by buyer","resource":{"id":"5O190127TN364715T","status":"APPROVED","note":"Tatenda 🙏 é"}}'
\set tid3 'd2b1a7f0-5106-11ef-8f10-5a6b7c8d9e0f'
\set time3 '2024-08-02T19:40:12Z'
\set s2 'V1YKel/n72hUwni4+I2uaoiBO213HeAKJDSa/G4RHMs06mGtHrWEIYVx8DSglo8/603Jv2h5sGIjyr2NN7wIs/exCeZrWeU1ozAQyGt45RWjNwPKwsrLgzSuU9dSEgRI99k5j8knhl383EqQJoRzshjLS/wUO1QfWc2ZZBbM6yZDaSwgKSdc3L3YvPOsdhdFkljJMIsc3WAO7PWBB9xKm72TaJWFpmxhu8Tf8P28FPNzryvsb5IsA+v85ZEsFmfAWiDJDnFDuCU7bHlUJEqd7FNYC37EJ3gr2DVnXZ2SZldnNSLVAdyqbHaopi1M8/ISN2k3pkJJpvlt4qIYJYgNKw=='
-- body 2 from the simulator, whose webhook id is the literal WEBHOOK_ID
\set tid5 '0a1b2c3d-5107-11ef-8e2f-a1b2c3d4e5f6'
\set time5 '2024-08-02T19:43:00Z'
\set s5 'QSMdhK3NpjfqXS/HjHOwQ3jk3oOSzzrNSY79MJEMsmOmYWiaGfLZvBtyDpRlvF4ioy0//Udxl8QxwhC9e6wKrHKIQGHRnTdTzar7Ur15r3xF1mfKLPB8LwvPBguUseAl3bi+Sh4adIIBhN8hw+5v4dxNeJ7pJBLoGFvLFs0gC+7AfJbrmYrpF6hfPAmZtwlj+PVDSaBpv3bu6D4zYKcnU3GS/3VjViNXfFe1NISzHNeaqOopUAR6AvmAhVzuzNo5CKjo5NNQ1DdHb6W7IsCllBTUX4+OA9Vm0joo/5Pc+PKoX96nlUTx7/RcjGmnfLFGSXzQ5CGLI6wPfLR32a4DPA=='
-- correctly signed bodies that are no usable event
\set tid3x 'e3c2b801-5106-11ef-a1b2-c3d4e5f60718'
\set time3x '2024-08-02T19:41:00Z'
\set s3 'Xz+0rkhn4xXQrT6pm5ZOXWGBJH8XPXGzSXA5AW8JJ1xGK/UZ2cjSs7p0V8TUxDOT3wNGD5K8IHoiIeul+f6giQ9j918GEVN08Lo8bAiC99K8Mhu/LR17bxmwm55ctKhHsnfDQG1hqBxwvbJ+cmAiGSbO4JuB58y/TJVlLO9ACMJbv5qhJoo3+tzJsg9JAOoQNJ0m30LTib2DVzqQj0+NsjWMjlN8ibVquk2S8O5zl4ZnVgBB68fC+cBrOcRLeXRm/VULv4XkD/HktPprzMcS4FHwjcceI6Jw5/GiYZmqbQXyTbKEVQ2LYVE3piSTtbVJYQ+cKFautp27Q0sZRXg2GA=='
\set tid4 'f4d3c912-5106-11ef-b2c3-d4e5f6071829'
\set time4 '2024-08-02T19:42:00Z'
\set s4 'ZxbVvmbIMXPJCCWhhqfC3oYTagL8RvM19wLy0/F75bgW8r8LjJt0f5B086mHKn+vbgVg9yw4rDtS6gSHSHnzQMcOMBOCUF0PQnkPJQMA8WodciRDCqDtWB0djcOj+HcsAHNRDigLivLnvv3iBK8kzxRaNLOv2aIWLB1qAqhC/5N3mWWoxUND5yClcFW4R4c5BhtcBzeCTfF0f60RzghpJAMcODocrQd8JnmQvtSXmb84xinto1FrEW94ASg8hl/jN5T615amtbOc3FK3/nGC4gJ+ZfOtgDUK3IRKa66Q1rAull01dTHfMDfAJO3hIujtfAK24sq1/VTRCxeGau8sMw=='

--------------------------------------------------------------------------------------------------
-- verify_paypal: the signature alone
--------------------------------------------------------------------------------------------------

-- valid; the CRC above 2^31 is signed as an unsigned decimal, as the SDKs do
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'cert');
-- a signature over the signed 32-bit form of that CRC does not verify
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1neg', :'cert');
-- a CRC below 2^31, a body with multi-byte UTF-8, and the simulator's WEBHOOK_ID
SELECT payments.verify_paypal(convert_to(:'b2', 'UTF8'), :'tid3', :'time3', :'wid', :'s2', :'cert');
SELECT payments.verify_paypal(convert_to(:'b2', 'UTF8'), :'tid5', :'time5', 'WEBHOOK_ID', :'s5', :'cert');
-- PayPal's own sandbox delivery of 2015 (PROVIDERS.md section 2.2, Vector A; regress/vectors names
-- where it comes from): valid, and not with one byte of its body changed
\set vector_a `cat vectors/paypal-vector-a.json`
SELECT payments.verify_paypal(convert_to(v ->> 'body', 'UTF8'), v ->> 'transmission_id', v ->> 'transmission_time',
							  v ->> 'webhook_id', v ->> 'transmission_sig', v ->> 'cert_pem') AS vector_a,
	   payments.verify_paypal(convert_to(replace(v ->> 'body', '20.0', '21.0'), 'UTF8'), v ->> 'transmission_id',
							  v ->> 'transmission_time', v ->> 'webhook_id', v ->> 'transmission_sig', v ->> 'cert_pem') AS vector_a_changed
  FROM (SELECT :'vector_a'::jsonb AS v) x;

-- every signed part counts: body (one byte changed, one byte added), webhook id, transmission id and time
SELECT payments.verify_paypal(convert_to(replace(:'b1', '30.00', '31.00'), 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1' || ' ', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', 'WEBHOOK_ID', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', lower(:'wid'), :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid2', :'time1', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', '2024-08-02T19:34:58Z', :'wid', :'s1', :'cert');
-- another transmission's signature
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1b', :'cert');

-- the wrong certificate; certificates whose key cannot be PayPal's: EC, RSA under 2048 bits, not PEM
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'other');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'ec');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'rsa1024');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', 'not a certificate');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', replace(:'cert', 'M', 'N'));
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', '');
-- line ends do not matter to PEM (PayPal's 2015 certificate was served with CRLF)
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', replace(:'cert', E'\n', E'\r\n'));

-- the signature must be padded standard base64: not base64, a line break inside, padding
-- missing, URL-safe alphabet, empty, and base64 of bytes that are no signature
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', 'not base64!', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', left(:'s1', 64) || E'\n' || substr(:'s1', 65), :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', rtrim(:'s1', '='), :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', translate(:'s1', '+/', '-_'), :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', '', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', 'AAAA', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', encode(decode(:'s1', 'base64') || '\x00'::bytea, 'base64'), :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1', :'wid', repeat('A', 1400), :'cert');

-- transmission id and time: 1 to 255 printable ASCII characters, no '|' that could shift a field
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1' || '|x', :'time1', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), '', :'time1', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', '', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), :'tid1', :'time1' || E'\t', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), repeat('a', 256), :'time1', :'wid', :'s1', :'cert');
SELECT payments.verify_paypal(convert_to(:'b1', 'UTF8'), 'transmissión', :'time1', :'wid', :'s1', :'cert');

-- NULL in, NULL out
SELECT payments.verify_paypal(NULL, :'tid1', :'time1', :'wid', :'s1', :'cert') IS NULL AS null_body;

--------------------------------------------------------------------------------------------------
-- Settings
--------------------------------------------------------------------------------------------------

SELECT kind, settings FROM payments.provider_kinds WHERE kind = 'paypal';
SELECT payments.register_provider('paypal', 'paypal');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": 42}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": ""}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "A|B"}');
-- the simulator's webhook id, which anyone can have PayPal sign for: only where asked for
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "WEBHOOK_ID"}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "WEBHOOK_ID", "allow_simulator": "yes"}');
BEGIN;
SELECT payments.register_provider('paypal-sim', 'paypal', '{"webhook_id": "WEBHOOK_ID", "allow_simulator": true}');
ROLLBACK;
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": "api.paypal.com"}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": []}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": ["api.paypal.com", 443]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": ["https://api.paypal.com"]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": ["api.paypal.com/v1"]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": ["localhost:0"]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": ["localhost:65536"]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": ["localhost:"]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "cert_hosts": [".paypal.com"]}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "verify_cert_chain": "false"}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "ca_file": "certs/ca.pem"}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "ca_file": true}');
-- keys of other kinds are unknown here (terse: the hint lists every key, which other features extend)
\set VERBOSITY terse
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "tolerance": 300}');
SELECT payments.register_provider('paypal', 'paypal', '{"webhook_id": "W", "secret": "x"}');
\set VERBOSITY default
SELECT count(*) AS paypal_providers FROM payments.providers WHERE kind = 'paypal';

SELECT payments.register_provider('paypal', 'paypal', jsonb_build_object('webhook_id', :'wid', 'verify_cert_chain', false));
SELECT payments.register_provider('paypal-wrong-id', 'paypal', '{"webhook_id": "WRONG597110X687430LKGECA", "verify_cert_chain": false}');
SELECT payments.register_provider('paypal-chain', 'paypal', jsonb_build_object('webhook_id', :'wid'));
SELECT payments.register_provider('paypal-ca-file', 'paypal', jsonb_build_object('webhook_id', :'wid', 'ca_file', '/nonexistent/paypal-ca.pem'));
SELECT payments.register_provider('paypal-local', 'paypal',
	jsonb_build_object('webhook_id', :'wid', 'cert_hosts', jsonb_build_array('localhost:1', 'API.PayPal.com')));
SELECT name, settings FROM payments.providers WHERE kind = 'paypal' ORDER BY name;

--------------------------------------------------------------------------------------------------
-- Certificates: seeding
--------------------------------------------------------------------------------------------------

\set url 'https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001'
SELECT payments.add_certificate(:'url', :'cert');
SELECT url, source, not_after > now() + interval '90 years' AS far_off, pem = :'cert' AS pem_kept
  FROM payments.certificates;
-- seeding again replaces
SELECT payments.add_certificate(:'url', :'other');
SELECT payments.add_certificate(:'url', :'cert');
SELECT count(*) AS certificates, bool_and(pem = :'cert') AS pem_kept FROM payments.certificates;
-- unusable URLs and PEMs
SELECT payments.add_certificate('http://api.paypal.com/v1/notifications/certs/CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com/v1/notifications/certs/CERT-1?x=1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com/v1/notifications/CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com/v1/notifications/certs/', :'cert');
-- one certificate, one URL: only as libcurl reads it (each other spelling would be fetched anew)
SELECT payments.add_certificate('https://API.paypal.com/v1/notifications/certs/CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com:443/v1/notifications/certs/CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com:/v1/notifications/certs/CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com/v1/notifications/certs/x/../CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com/v1/./notifications/certs/CERT-1', :'cert');
SELECT payments.add_certificate('https://api.paypal.com//v1/notifications/certs/CERT-1', :'cert');
SELECT payments.add_certificate(:'url', 'not a certificate');
SELECT payments.add_certificate(:'url', replace(:'cert', 'M', 'N'));
SELECT payments.add_certificate(:'url', :'cert' || E'-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
SELECT payments.add_certificate(:'url', repeat('x', 70000));
SELECT payments.add_certificate(:'url', NULL);
SELECT payments.add_certificate(NULL, :'cert');
SELECT count(*) AS certificates FROM payments.certificates;

-- seeding is for admins; the pure verifier is open
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'payments'::regnamespace AND p.proname IN ('add_certificate', 'verify_paypal')
 ORDER BY p.proname;

--------------------------------------------------------------------------------------------------
-- Deliveries through ingest
--------------------------------------------------------------------------------------------------

CREATE FUNCTION pg_temp.pp(tid text, ttime text, sig text,
						   url text DEFAULT 'https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
						   algo text DEFAULT 'SHA256withRSA') RETURNS jsonb
	LANGUAGE sql AS $$
	SELECT jsonb_build_object('paypal-transmission-id', tid, 'paypal-transmission-time', ttime,
							  'paypal-transmission-sig', sig, 'paypal-cert-url', url,
							  'paypal-auth-algo', algo, 'paypal-auth-version', 'v2',
							  'content-type', 'application/json', 'authorization', 'Bearer must-not-be-stored')
$$;

-- valid: stored once; PayPal's retry (new transmission id, time and signature) and a replay
-- of the same transmission are duplicates of the event id
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'), '203.0.113.9', 'pp-req-1');
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid2', :'time2', :'s1b'), convert_to(:'b1', 'UTF8'));
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'));
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid3', :'time3', :'s2'), convert_to(:'b2', 'UTF8'));
SELECT event_id, event_type, event_at, source_ip, request_id, state,
	   payload -> 'resource' ->> 'id' AS resource_id,
	   headers ? 'paypal-transmission-sig' AS has_signature, headers ? 'authorization' AS has_authorization
  FROM payments.events WHERE provider = 'paypal' ORDER BY id;
SELECT bool_and(body = convert_to(:'b1', 'UTF8')) AS body_exact FROM payments.events
 WHERE provider = 'paypal' AND event_id = 'WH-2WR32451HC0233532-67976317FL4071431';
-- the signature covers only the body's CRC-32, which can be forged: body 1's transmission with
-- another body of the same CRC (another event id, capture and amount, and a padding field)
-- verifies, but its transmission id was stored with body 1, so it is refused
\set forged '{"id":"WH-FORGED00000000000000000-00000000000000000","event_version":"1.0","create_time":"2024-08-02T19:33:35.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed for $ 3000.0 USD","resource":{"id":"99Z99999ZZ999999Z","amount":{"currency_code":"USD","value":"3000.00"},"invoice_id":"INV-1001","status":"COMPLETED"},"pad":"caaaaaaacaacaaacacaccaacaaaccaacaaaaaaaaaaaaaaaa"}'
SELECT payments.verify_paypal(convert_to(:'forged', 'UTF8'), :'tid1', :'time1', :'wid', :'s1', :'cert') AS signature_alone;
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'forged', 'UTF8'));
SELECT outcome, reason, detail FROM payments.rejections WHERE provider = 'paypal' ORDER BY id DESC LIMIT 1;
SELECT count(*) AS forged_stored FROM payments.events WHERE provider = 'paypal' AND event_id LIKE 'WH-FORGED%';
-- that refusal (or any refused body) does not stand in the way of PayPal's own retry of body 1
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'));
-- a body and its forgery in one batch: the second sees the first, stored by the same statement
SELECT payments.register_provider('paypal-batch', 'paypal', jsonb_build_object('webhook_id', :'wid', 'verify_cert_chain', false));
SELECT http_status, outcome, event_id, sqlstate FROM payments.ingest_batch(ARRAY['paypal-batch', 'paypal-batch'],
	ARRAY[pg_temp.pp(:'tid1', :'time1', :'s1'), pg_temp.pp(:'tid1', :'time1', :'s1')],
	ARRAY[convert_to(:'b1', 'UTF8'), convert_to(:'forged', 'UTF8')], ARRAY[NULL, NULL]::inet[], ARRAY[NULL, NULL]::text[]);

-- each header missing, or not a string
SELECT h AS without, r.*
  FROM unnest(ARRAY['paypal-transmission-id', 'paypal-transmission-time', 'paypal-transmission-sig',
					'paypal-cert-url', 'paypal-auth-algo']) WITH ORDINALITY AS u(h, n),
	   payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1') - h, convert_to(:'b1', 'UTF8')) r
 ORDER BY n;
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1') || '{"paypal-transmission-sig": ["x"]}', convert_to(:'b1', 'UTF8'));
-- only SHA256withRSA, exactly
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1', algo => 'SHA1withRSA'), convert_to(:'b1', 'UTF8'));
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1', algo => 'sha256withrsa'), convert_to(:'b1', 'UTF8'));
-- malformed signature, tampered body, wrong webhook id (another provider's setting)
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', 'not base64'), convert_to(:'b1', 'UTF8'));
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(replace(:'b1', '30.00', '3000.00'), 'UTF8'));
SELECT * FROM payments.ingest('paypal-wrong-id', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'));

-- certificate URLs off the allowlist or out of shape: refused before the cache or the
-- network is touched (a fetch would be a 503 here, with no network)
SELECT left(u, 100) AS cert_url, r.http_status, r.outcome
  FROM unnest(ARRAY[
		'https://evil.example.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://api.paypal.com.evil.example/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://api.paypal.com:8443/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://127.0.0.1/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://[::1]/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'http://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'ftp://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://user@api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://api.paypal.com@evil.example.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001?x=1',
		'https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001#x',
		'https://api.paypal.com/v1/notifications/webhooks/CERT-360caa42-fca2a594-test0001',
		'https://api.paypal.com/v1/notifications/certs/../../../evil',
		'https://api.paypal.com/v1/notifications/certs/',
		'https://api.paypal.com/v1/notifications/certs/CERT%2D360caa42',
		'https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001/x',
		' https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001',
		'https://api.paypal.com/v1/notifications/certs/CERT-' || repeat('a', 500),
		'']) WITH ORDINALITY AS x(u, n),
	   payments.ingest('paypal', pg_temp.pp(:'tid1', :'time1', :'s1', url => u), convert_to(:'b1', 'UTF8')) r
 ORDER BY n;
SELECT count(*) AS certificates FROM payments.certificates;

-- with the chain verified (the default) our self-signed certificate is not trusted by the
-- system's roots; a ca_file that cannot be read is our problem, not the sender's: 503
SELECT * FROM payments.ingest('paypal-chain', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'));
SET client_min_messages = error;	-- the WARNING carries OpenSSL's and libcurl's wording
SELECT * FROM payments.ingest('paypal-ca-file', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'));
-- an allowlisted URL that is not cached is fetched; nothing listens on port 1: 503, nothing
-- cached, nothing recorded
SELECT * FROM payments.ingest('paypal-local', pg_temp.pp(:'tid1', :'time1', :'s1', url => 'https://localhost:1/v1/notifications/certs/CERT-local'), convert_to(:'b1', 'UTF8'));
RESET client_min_messages;
-- allowlist entries match host names in any case; the seeded URL is cached as sent
SELECT * FROM payments.ingest('paypal-local', pg_temp.pp(:'tid1', :'time1', :'s1', url => 'https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-test0001'), convert_to(:'b1', 'UTF8'));
SELECT count(*) AS certificates FROM payments.certificates;

-- correctly signed bodies that are not usable events: 400 (a body sent first with the same
-- transmission id but no valid signature does not make them transmission_reused)
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid3x', :'time3x', :'s3'), convert_to('{"id":"WH-junk"}', 'UTF8'));
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid3x', :'time3x', :'s3'), convert_to('not json', 'UTF8'));
SELECT * FROM payments.ingest('paypal', pg_temp.pp(:'tid4', :'time4', :'s4'), convert_to('{"event_type":"PAYMENT.CAPTURE.COMPLETED"}', 'UTF8'));

-- a provider whose webhook_id went missing behind register_provider's back
UPDATE payments.providers SET settings = settings - 'webhook_id' WHERE name = 'paypal-wrong-id';
SELECT * FROM payments.ingest('paypal-wrong-id', pg_temp.pp(:'tid1', :'time1', :'s1'), convert_to(:'b1', 'UTF8'));

-- what was recorded: every refusal with its reason, no credentials
SELECT provider, outcome, reason, detail FROM payments.rejections
 WHERE provider IN (SELECT name FROM payments.providers WHERE kind = 'paypal') ORDER BY id;
SELECT count(*) FILTER (WHERE headers ? 'authorization') AS with_authorization,
	   count(*) FILTER (WHERE headers ? 'paypal-cert-url') AS with_cert_url
  FROM payments.rejections WHERE provider IN (SELECT name FROM payments.providers WHERE kind = 'paypal');
SELECT provider, event_id FROM payments.events
 WHERE provider IN (SELECT name FROM payments.providers WHERE kind = 'paypal') ORDER BY id;

--------------------------------------------------------------------------------------------------
-- The method and the payer of an order paid from each kind of source (Orders v2 payment_source:
-- card, apple_pay, google_pay, venmo, and an alternative method, ideal), signed and delivered in
-- both orders: the order, then its capture; the capture, then the order (rolled back)
--------------------------------------------------------------------------------------------------

\set card_order '{"id":"WH-SRC-CARD-ORDER","event_version":"1.0","create_time":"2024-09-01T10:00:00.000Z","resource_type":"checkout-order","resource_version":"2.0","event_type":"CHECKOUT.ORDER.APPROVED","summary":"An order has been approved by buyer","resource":{"id":"ORDER-CARD","status":"APPROVED","intent":"CAPTURE","payment_source":{"card":{"name":"Rudo Chari","last_digits":"7704","brand":"VISA","type":"CREDIT","billing_address":{"country_code":"ZA"}}},"purchase_units":[{"reference_id":"default","amount":{"currency_code":"USD","value":"12.00"}}]}}'
\set card_order_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000001","time":"2024-09-01T10:00:05Z","sig":"IE2M7GtscTomm3w3RCNwOysKmAYRb3erIbPGWALnibR5UbtLPsXQDohKwZyT+HJUyUwF7aU9w2G0ljprECWcOhCRdr7e6MGguX+GmZXXfmFugQiuAStBHOOza/oT27Ze76I0cxA27PiFM+attET8y32kJs6jg5EyD0xGv4dGlyGIeiKTtyuwTd0+riZSDygb0Rslc2VSlSUFGl0AwL1hLOCJlFxai11mCslrEDlQtfNapmhqU3zx4gqkdvsEYIFeVNF8q8TqnLyTIwIMJ/wHKcH8+xhfN0syt0BRsdM2KAfLAsf+VYz4949dyKP00Raa1HYO+K1YomuF6T2Y5+9NXA=="}'
\set card_capture '{"id":"WH-SRC-CARD-CAPTURE","event_version":"1.0","create_time":"2024-09-01T10:00:30.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed","resource":{"id":"CAP-CARD","amount":{"currency_code":"USD","value":"12.00"},"status":"COMPLETED","supplementary_data":{"related_ids":{"order_id":"ORDER-CARD"}}}}'
\set card_capture_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000002","time":"2024-09-01T10:00:35Z","sig":"Myq091XKcJUvm0pU0+rXKPQXEtq4KnMDTaU5wg36kX9j2fnJa8gVaDCgX8XBrAIAvEWyLINoiFZX/KlYAtnX37LKPSdong5rDp1jSiSKQqj+lVmtTQ78cB0H98pLj8ZoVBMWhozLsxLSkDnyKUE5gsg9xfpug6kzDYWERp9gPmSnjadm9a/M6ZDZu+NEx4eeLZgrcC3JixOxMUpEmK7Ceyosf2aULibdItcQW7kpZPcvQPvi0z4RpWQORtSbi0p1CmaGVcoYRZ5hlzHd0XY2z/HNFzcqossRb/g9tmYI3oFIGYz4C8zjC2eCk4K57sEBTe5Aakr4n1obIo6mutK9Tg=="}'
\set apple_order '{"id":"WH-SRC-APPLE-ORDER","event_version":"1.0","create_time":"2024-09-01T10:01:00.000Z","resource_type":"checkout-order","resource_version":"2.0","event_type":"CHECKOUT.ORDER.APPROVED","summary":"An order has been approved by buyer","resource":{"id":"ORDER-APPLE","status":"APPROVED","intent":"CAPTURE","payment_source":{"apple_pay":{"id":"ap-7b1c","email_address":"farai@example.org","phone_number":{"national_number":"4155552671"},"card":{"name":"Farai Ncube","last_digits":"1111","brand":"VISA","type":"CREDIT","billing_address":{"address_line_1":"1 Main St","admin_area_2":"San Jose","admin_area_1":"CA","postal_code":"95131","country_code":"US"}}}},"purchase_units":[{"reference_id":"default","amount":{"currency_code":"USD","value":"13.00"}}]}}'
\set apple_order_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000003","time":"2024-09-01T10:01:05Z","sig":"Nk+9ZQhg3qMZW8EEwQKnRU5cuC6eUvkN1gofSI3wlJbDjxJmIlPLXb5iqWmkCRhXFZLxme9+nKj7tm2f6l8PXJF0CoJuB4wYEMUz8NzffLZBNN5Wt3sWWsO39DkeaH40JgJ9JzBItJmoqx2pWYyne/lyg1hdiyROqc7TyFt6rQ6g71fSOP21v2q+cVuNcjpTd592lh6bzMT3jrhcoCPVk73mnxhv+RG5+QeYsi1q83LOgPBRnK/kEhS6acCFoVFwUcpE15rXSXab+h+XkiHaV3rboi4qQy+hv/DkshcK5wMfT0NSxIm6MmfJaSgEv7sh6HX0zcHdEFE/zq7wgF1c1w=="}'
\set apple_capture '{"id":"WH-SRC-APPLE-CAPTURE","event_version":"1.0","create_time":"2024-09-01T10:01:30.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed","resource":{"id":"CAP-APPLE","amount":{"currency_code":"USD","value":"13.00"},"status":"COMPLETED","supplementary_data":{"related_ids":{"order_id":"ORDER-APPLE"}}}}'
\set apple_capture_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000004","time":"2024-09-01T10:01:35Z","sig":"ZlhcPEDkHQ4SV9XdAF1L5DMVVKM0QWikx9nXeug9L5cO689nuDQkEOD/p+7ejX60II0zG42a17UMiLk1PI7CQwEUauiVzcG8HJ69QnMInq3yY4uEr7lQ1M97YY/CNx4UK6JvymFuil5ybI9ajvXSOVqswYqZdkHnC37xF/5NP5lbBWVDzQfBdX1wYHx3PY+6xw5fAIsfM/sw66y8AOZJ6CFXbQU4mBnf/11wNe3ZZe3BTOvG7jAhem5gEbBEd5P24WdDy+m3TzELXLZqnlGbWFQIEUf/JpCMH72B+gomQIsdp4v5KLAHKQkqF0sbSwCQYWCgaTtKNppHZoSHJ2jwBA=="}'
\set google_order '{"id":"WH-SRC-GOOGLE-ORDER","event_version":"1.0","create_time":"2024-09-01T10:02:00.000Z","resource_type":"checkout-order","resource_version":"2.0","event_type":"CHECKOUT.ORDER.APPROVED","summary":"An order has been approved by buyer","resource":{"id":"ORDER-GOOGLE","status":"APPROVED","intent":"CAPTURE","payment_source":{"google_pay":{"name":"Nyasha Banda","email_address":"nyasha@example.org","phone_number":{"country_code":"263","national_number":"771234567"},"card":{"name":"N Banda","last_digits":"4242","type":"DEBIT","brand":"MASTERCARD","billing_address":{"country_code":"ZW"}}}},"purchase_units":[{"reference_id":"default","amount":{"currency_code":"USD","value":"14.00"}}]}}'
\set google_order_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000005","time":"2024-09-01T10:02:05Z","sig":"bkvVErvhpw21cIGjyoitjsg2H7qmfqaue/RfmfD6zJZm/TYE3pWR4bkT8m2V9pI3MWnRWikMN6e2he5GuY4a0yR4R68djmJCnNv4mruKwm56kPUPylobd3+8DIyYp0e+jzrsf1Usy6PeuEnU6ZTO/sI+UzwhE0FeY7N/yRUJYLVQAi4KefZS/tQzMIct0yxanaKEyzWId1seR947xqhZ9TYfzM+OJiTclNWGM4NHYglNB+Ap/xNixrGCUVnbYTgWOd606kvQgry9+AaCNCCf8e3KsSLD+KKTlDklZba+MNvrBKnNhJBa/4/1IxiP+21KBdXLamQVrZRBZkkug4cDSw=="}'
\set google_capture '{"id":"WH-SRC-GOOGLE-CAPTURE","event_version":"1.0","create_time":"2024-09-01T10:02:30.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed","resource":{"id":"CAP-GOOGLE","amount":{"currency_code":"USD","value":"14.00"},"status":"COMPLETED","supplementary_data":{"related_ids":{"order_id":"ORDER-GOOGLE"}}}}'
\set google_capture_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000006","time":"2024-09-01T10:02:35Z","sig":"Ak/B3QA9Y84yOUFtSWBrlQUOC9pPe9GNTpOuH9JyKi8UejCalzxcf1fPmTumbIUgmp4bTk40U43AXAUeCWwmuifNo959d7bfQ52SW59mOjHj5FJYOIf8rsL+8iyLqbtSU3B53pA1iSjAYqV6ZdKUZy264CY0ogqhBC/6Xl6ip1+qj6+kMZXeNTABEL6bnuaZ8zBaT7alM0NuW6AofrHOrovB6NBIzHXpcYNLlUy1YuqaEjO6+JhLgMNbWxv0AOaEhdMthUD0x3e2T9V8G1gm+PGQ2Z/aGMNmAYO6UPBL+hDN66oVdhiMWkCh2QYPx7AeqSVawEV76IjW3ah+c2uXHg=="}'
\set venmo_order '{"id":"WH-SRC-VENMO-ORDER","event_version":"1.0","create_time":"2024-09-01T10:03:00.000Z","resource_type":"checkout-order","resource_version":"2.0","event_type":"CHECKOUT.ORDER.APPROVED","summary":"An order has been approved by buyer","resource":{"id":"ORDER-VENMO","status":"APPROVED","intent":"CAPTURE","payment_source":{"venmo":{"email_address":"kuda@example.org","account_id":"QYR5Z8XDVJNXR","user_name":"kuda-m","name":{"given_name":"Kuda","surname":"Mlambo"},"phone_number":{"national_number":"2025550143"},"address":{"country_code":"US"}}},"purchase_units":[{"reference_id":"default","amount":{"currency_code":"USD","value":"15.00"}}]}}'
\set venmo_order_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000007","time":"2024-09-01T10:03:05Z","sig":"YK+9S/jQRc+iFEB5yyEj4cJcjocTCkUI8UovbqtqzE1NGw80+cIuTJJ0Ua0Fai4+lgT9oOsis5f8mSbr7gKr8aKK4jVnkQLK4V/9GsIuVdP60xbMXyf+1CX2GVQbgARrEA9fvtQaLh0oDwcqS/tBOtvyPTBNPzSR7+9qyiqyTApOHSgL3bXVP2DzLgbKL3vhdwSzaK8XoIT9DFA19IhTB6J6aLZWW1a1z1Tf0KiLnPSv4oalKMnX53TRr56ycqevPQx5IfXoqH9iniXuTfwYKNEJF3gsJ6jgD8KQ21+AAVod2Az1Sm4GV5E5nI/bxD7PT614YE+NYq4cOewg/crL/g=="}'
\set venmo_capture '{"id":"WH-SRC-VENMO-CAPTURE","event_version":"1.0","create_time":"2024-09-01T10:03:30.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed","resource":{"id":"CAP-VENMO","amount":{"currency_code":"USD","value":"15.00"},"status":"COMPLETED","supplementary_data":{"related_ids":{"order_id":"ORDER-VENMO"}}}}'
\set venmo_capture_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000008","time":"2024-09-01T10:03:35Z","sig":"Wb6UXX3jVcuoJKbWQvCoswpbn+0tvgIRsC4bvjVEu5yaLHwbZQa252J9rZffGedz7J1LkLwzhQKkCj/YJsqZfj45mKxz/gydpbNWUf8ig+dh5Fi10ZE7Iw7mBU9E53djGE5VDGCS1bvuRPhW9Hb+Y/DFBByR0Tu/bKvXFayhTwKjR5NvqlxVAlcyhmtn4tJ+QCchaaDKtdfi6j3eH2BadNQ+2k3rrxwx7/E8EblqFofW8X+4uJklz/tZGyDZZIQaDxvmxjjtAo5QCe0pHDM5QDmLTxsImviZ9umuCecuGF80hDfniXalthyp3Wb/7DlGiBvTzkoLk8W4kG87dH9NYQ=="}'
\set ideal_order '{"id":"WH-SRC-IDEAL-ORDER","event_version":"1.0","create_time":"2024-09-01T10:04:00.000Z","resource_type":"checkout-order","resource_version":"2.0","event_type":"CHECKOUT.ORDER.APPROVED","summary":"An order has been approved by buyer","resource":{"id":"ORDER-IDEAL","status":"APPROVED","intent":"CAPTURE","payment_source":{"ideal":{"name":"Sanne de Vries","country_code":"NL","bic":"INGBNL2A","iban_last_chars":"5678"}},"purchase_units":[{"reference_id":"default","amount":{"currency_code":"USD","value":"16.00"}}]}}'
\set ideal_order_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000009","time":"2024-09-01T10:04:05Z","sig":"FTB8IWza8yYaWxGD/WcgD9dKxqu5v+Qh4N6QQliKhmWa0lxmi7QSmnrMX8l/SSGzh7AhX7VL1cnGKWIW7LsQ299cEB9s29VyOVr84JBDBzLJxCQYkaN5oAOP/YvZDyOURWF1jesy99pVBz0xa69Wo4kygaVkn9zMTXbVFJF5q9YTWgGxJMhLNCLGAp57gOuS8+EgRbq6jhiY7SjDA0CC5fsyh9JFaOZVBQF3m2uaV6IoPJRkCyykekc/PdGGOxupbSBO3g6IcDLEZrmsQ2VPMfQKSRRvyWKbxZkA8Yj8vtgcEu5ZxIsw5RbtlyLxIxZnNVsYKfaalmcg9K1Uc2sZSg=="}'
\set ideal_capture '{"id":"WH-SRC-IDEAL-CAPTURE","event_version":"1.0","create_time":"2024-09-01T10:04:30.000Z","resource_type":"capture","resource_version":"2.0","event_type":"PAYMENT.CAPTURE.COMPLETED","summary":"Payment completed","resource":{"id":"CAP-IDEAL","amount":{"currency_code":"USD","value":"16.00"},"status":"COMPLETED","supplementary_data":{"related_ids":{"order_id":"ORDER-IDEAL"}}}}'
\set ideal_capture_h '{"tid":"a0b1c2d3-6801-11ef-8000-000000000010","time":"2024-09-01T10:04:35Z","sig":"iam2NkYj2b9aCKV1tJrRwlTcD9cnN808VHWGWMeYyNQ+BZrZyiwp5jtLfOtvuxSnW+f87PBaVXwFwRXYsRCvJk0O5ApXCZ7ESH4+s72Bcev7XvLpk0CYqEu0D9w3/7mXXzaFXtbMHCtmcNZeNhrdJnL0NpgUvzMFL62lw/7lgktGtEmXcZKQqZVo0sK+OpxXnKUf7yDsj3tSFaKrltTVOjv6Kgm+zjBJkNi/Ir3Z3b0IDxnJrKl1wXnbtgEoDQPEdOlSn/dCkEn/U8HmLd+CfnzB2Wu8+Mg+g9P8Fs0C7duU7zeKL2+hGmR/3XHkyDC38ZxmfHaUQt7++DbUVC0h2Q=="}'
BEGIN;
SELECT payments.register_provider(p, 'paypal', jsonb_build_object('webhook_id', :'wid', 'verify_cert_chain', false)) IS NOT NULL AS registered
  FROM unnest(ARRAY['pp-order-first', 'pp-capture-first']) p;
CREATE FUNCTION pg_temp.deliver_to(provider text, body text, h jsonb) RETURNS text LANGUAGE sql AS $$
	SELECT i.http_status || ' ' || i.outcome
	  FROM payments.ingest(provider, pg_temp.pp(h ->> 'tid', h ->> 'time', h ->> 'sig'), convert_to(body, 'UTF8')) i $$;
CREATE TEMP TABLE src (n int, source text, ord text, ord_h jsonb, cap text, cap_h jsonb);
INSERT INTO src VALUES
	(1, 'card', :'card_order', :'card_order_h', :'card_capture', :'card_capture_h'),
	(2, 'apple_pay', :'apple_order', :'apple_order_h', :'apple_capture', :'apple_capture_h'),
	(3, 'google_pay', :'google_order', :'google_order_h', :'google_capture', :'google_capture_h'),
	(4, 'venmo', :'venmo_order', :'venmo_order_h', :'venmo_capture', :'venmo_capture_h'),
	(5, 'ideal', :'ideal_order', :'ideal_order_h', :'ideal_capture', :'ideal_capture_h');
-- the order, then its capture: the capture names no source and leaves the order's method
SELECT source, pg_temp.deliver_to('pp-order-first', ord, ord_h) AS order_outcome,
	   pg_temp.deliver_to('pp-order-first', cap, cap_h) AS capture_outcome
  FROM src ORDER BY n;
-- the capture first: a payment known from its capture alone is paid by paypal, as before
SELECT source, pg_temp.deliver_to('pp-capture-first', cap, cap_h) AS capture_outcome FROM src ORDER BY n;
SELECT provider_ref, status, method, donor_name FROM payments.payments
 WHERE provider = 'pp-capture-first' ORDER BY provider_ref;
-- then its order (older than the capture: no move of its status) names the source, and the payer:
-- applied
SELECT source, pg_temp.deliver_to('pp-capture-first', ord, ord_h) AS order_outcome FROM src ORDER BY n;
-- both orders of delivery end alike: the source as the method, the payer from it (a phone only
-- where its calling code is given: Google Pay's)
SELECT provider_ref, provider, status, amount, method, donor_name, donor_email, donor_phone, country
  FROM payments.payments WHERE provider IN ('pp-order-first', 'pp-capture-first')
 ORDER BY provider_ref, provider DESC;
SELECT count(*) FILTER (WHERE f.provider_ref IS NULL OR (o.status, o.amount, o.method, o.donor_name, o.donor_email, o.donor_phone, o.country)
					 IS DISTINCT FROM (f.status, f.amount, f.method, f.donor_name, f.donor_email, f.donor_phone, f.country)) AS differing
  FROM payments.payments o
  LEFT JOIN payments.payments f ON f.provider = 'pp-capture-first' AND f.provider_ref = o.provider_ref
 WHERE o.provider = 'pp-order-first';
-- which source: the key of payment_source when it names exactly one
SELECT n, payments.paypal_payment_source(r::jsonb) FROM unnest(ARRAY[
 '{"payment_source":{"venmo":{}}}', '{"payment_source":{"paypal":{"email_address":"a@b.org"}}}',
 '{"payment_source":{"card":{},"paypal":{}}}', '{"payment_source":{}}', '{"payment_source":"card"}',
 '{"payment_source":{"card":"x"}}', '{"payment_source":{"Card; DROP":{}}}', '{}', '[]', 'null'
]) WITH ORDINALITY AS t (r, n);
-- news of an earlier attempt delivered late does not rename the method of a payment paid since:
-- a reversed approval (an iDEAL attempt that failed) never, an approval older than the status not
-- when another approval named it (ignored, the method kept: card)
CREATE FUNCTION pg_temp.late(etype text, source text, at text) RETURNS text LANGUAGE sql AS $$
	SELECT payments.apply_paypal_change(NULL, 'pp-order-first', payments.paypal_change(e, 'pp-order-first', at::timestamptz), e)
	  FROM (SELECT jsonb_build_object('id', 'WH-LATE-' || etype || source, 'event_type', etype, 'create_time', at,
			'resource', jsonb_build_object('id', 'ORDER-CARD', 'status', 'APPROVED',
				'payment_source', jsonb_build_object(source, '{}'::jsonb),
				'purchase_units', jsonb_build_array(jsonb_build_object('amount', jsonb_build_object('currency_code', 'USD', 'value', '12.00')))))) t (e) $$;
SELECT pg_temp.late('CHECKOUT.PAYMENT-APPROVAL.REVERSED', 'ideal', '2024-09-01T09:00:00Z') AS reversed_ideal,
	   pg_temp.late('CHECKOUT.ORDER.APPROVED', 'paypal', '2024-09-01T08:00:00Z') AS approved_paypal,
	   pg_temp.late('CHECKOUT.PAYMENT-APPROVAL.REVERSED', 'ideal', '2024-09-02T09:00:00Z') AS reversed_ideal_later;
SELECT status, method FROM payments.payments WHERE provider = 'pp-order-first' AND provider_ref = 'ORDER-CARD';
ROLLBACK;
