-- WhatsApp Flows data endpoint: keys, the crypto primitives (with vectors made by OpenSSL's
-- command line and Node's crypto module), payments.flows_exchange's status codes, the donation form.
\set SHOW_CONTEXT never

-- A fixed RSA-2048 test key, PKCS#1 under des-ede3-cbc as Meta's key generator writes it
-- (openssl genrsa -traditional -des3, passphrase regress-passphrase), and its public key.
\set key '-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: DES-EDE3-CBC,85DD4BC8D8835858\n\nv5i+TjDoNPv++4wOitAnjKU3mCArOZRlZ5KxSj+OXqGO0TSJMvSOZQiGM38yQOj4\nDiT+VpFmM9Gc4IHNQczfSLrimUDDJz2ZIu+LqMQJBtW3mO07TRmRCeKAbfjjeUVd\nplJ+kPZUxbR6vXPKVKuoYQaeFLxVtvfy+DlplNva2btbir0BBbsTfqzznWAiFmRI\nYEWRtDGsv41iexNh2AcXgLXTPP1A3CXjFp4qbM15nlRpqJrRBxCOtj+bOHwk3kAn\nrfi6LWFD4gHJ+v7xg6ulxcx2FZcEosXDQms4ZHIxodN9i2r8Z81/CjVlYI8opmg3\n71QuBH4DOOCLMzjWqvC6tE9OQIWBNetgFUKgk/C7ZBylfZ//yExjBOspec/mKntT\nnpTtlQ7OTsY17RlzrrntCFDBPaCUmfAsg4sXSB2JVerZdwE21xWwbqSrxmTnK8Tz\n5NjuL1wC3uHFiweAJxMMEJqHV6uXXpQujY9wiI8akXOSkxdhsjRyZZniRHtk73ks\n4mZVd9LBFFv8Dw85y7gUHFSaUEDmTVO8/urEC6dUpdm+9185l2uAJNdyu/gVxnS7\nvN1uPPSoZabhZ6J0eJtYVZ3fq6p6Cdn6agqkIM5WPa2o5QIk0Hbm1lSs6fGJRh2M\nMK32ps99eyvtcj6vBIfJmXRbvASBQhmHoOj3NBT14UqjkCNnZgD6vCxhkYbrxRHr\nCAjWQVV1oi0EZevBs5YXLtkhWVdKi8KZc1TGTFwqlTtkuGOOHH2x2WWsDTVL8245\nWBgtjxhr0GgGUOrDLLaTvFZ10sybeOYGS4HHj/16uxDytqBtmyCxt2kb4o9/HwX4\nFe6ndaMwV0jQyg0UTmsThxekplEIdRuBGKCZ3w2RAuIncNUP2VWz8kMy+z7h5ifo\naq0e0IBXnDLWu5/RIs9BBypWpgX522wcGC9W0Jcqzykx/uDxf1KdsqpSTBYMgTOe\nUfihX7TY/WaTML2z/PvclE94axxZWhhY3YTDhh4NkqRLVUvMTx5v7PYkyjyM4sN5\n3bkHgrAEtCCYnVQZk0RBCfUEGmlaAhX4Xij37mYcURHN4+9LGMTHRZ9sUWq0yOKg\n6sokU8g3EFUv+5H0Dou9nL/Yuggib9pt7onMPYDw0JFc9pg5V5n4UO2A0S3Q7wTo\n2y9rsk1sjEI9wA/mP3BpMCgWLk0G6YOAIWTPBLCpuvzTy1RYX93m530p+sM24ANv\nDaBF2q7ALVjQoQtweOhOd/uFwFqmwGUx+sv452KyCIBXwY3n83DuGtID1RtuWdwe\n5orXT02+B7WmMD8tKg2KVFVFssXqB7KISCijXh8vbPZ7O6jY9cBGr9spVStZ7Tsz\nbBpkfq0oI7D430RDT9R3n1Cmkj9Ba96r7+xeV5T+zQ0qW1RBe7W6y6pVynkvreio\nFb21AO7EPi7GrY1jCfuEBrd3aCEZ6sYb5EdF3ZNYZyvled8tcXTPQcU08Oq5B4I6\nFh9drMSwb5ckt+zDz3OFFyC4JDzwXj9OR5x1qTUhNF15Ga6z98INY8V1Mr8hXEgv\nAX8sw8Y83++wwb269YxpxRVoswfvEdJbWyVFOlBoHup20qfjdWWpbA==\n-----END RSA PRIVATE KEY-----'
\set public_key '-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArHcch5A6CSklWSpEDqqu\no5/egFLarJhaCxlPoCx+jE8xceXUMcytJmAcCyieuuyJXlKuISosgqjmh1/LFP75\nheNJxCIrB90vEMiQtoy1FbG7zA+NdTv2kUnJCKuzefQdnQLDEYuOsvlrpd8UjkJ3\n+hRMt4p64URehcDWrA4sEi/t5mEYbJDeL2frdkEOExU1v3ERYvuKUvOdCB91VVfH\njpmIF6Js9RYDdAtNYX2NCxvpunCYiNRKk295v6p48d5vAVQaVdomVvTD1GS3YB3Y\ncRXQScLEDlUQOH9hQqWunR3bMmnPHnqQSyg0EyARzXxXz0dBGbBiFrhLZeZ8OICp\ncQIDAQAB\n-----END PUBLIC KEY-----'
-- a second key, PKCS#8 without a passphrase (openssl genpkey), for rotation
\set key2 '-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC+40/nZNCMXzfa\n8iE/zqwbZaQpgD1V4S4/J7HH2G18Rjiqo+9BjwUHfeRl2lPHEIkPdpZjxRmZ5jEL\nlLVjDlcg7aW1eAiZ9p7+oxzuBoUzH4tgksiuZQWgY9zrDlFRj1EPRWx+1gTeekAQ\ngz1U2WFALp2e+cfvvHitWHFsLsZJhWPZfooIlSmgWUpPVIPA3D59wUASx4Z30azG\n8xsRHUaULnGQmCB/GR+6SLbtUCM1Qz/upFpl65jSg4a5A1b1rw4bCjeoT9ABGBWF\n01Svn6AuiFbuCERJGZHy6QPZlbeeDUrzeXhqAuhnTpfZng4G+SmC2oaBgtISAXF4\nCO+1FDzxAgMBAAECggEAFSnamAsDXCzKYonpycs+JaN1Oeyv4C+hEvtxqHiEWvzm\nF3Upd5lFs3jvs6MrGqzopUA+mD0oA3oUAfawzZSvcEUo1B/ExF0lb5HiCTnL1sku\niLx9Z2hn4UpxGdZyiZpcIFdQGhfcXlYreCk0yY14TMdeTlvfIONCdeWSXa4p6cig\nylAz5FDiPsEtyOrTTNpmdJnsF+jH+O1z2i/y7yed1+1mi8JVXnCUYDGrSA2f+zDM\nqbifB+neETR9x8N5g9YkI0VbdjH1kQYl9wjOcpqRO/gZkqc6qSq6UIHkaxZyavrz\nTboaGyLKLJVIHm/G7pBgOlcVisi9uj7ci3X+kJLkyQKBgQD63Jnx7GyFZTwPu7se\ny5oi9M3sH3mhdRnBlMJWTTBtXsxwvUZHc9fxgGoiCNZXuHiAXBskWFImSXy1eWsf\n2Tv1yrlb6CSz2Ls5gT0mT0D/w2fa1MesQFxidiqkABYJz+dsW7IzEXtX6SkrfJIx\nD4dmF9qk73uR2w3O8fFPJoxzJwKBgQDCzDyrHgizdtGHu4gNYZLikFYGcdQ0k3lj\nfiiyMbDG51WDo3FgYV1oi0FSYhVPcKT78VY9AqVJRnzh3oUS/JyHh0vmaBt5oVyK\n8PhbfrRRaHkBUl8PGzjwzNrzXoGrW/I1YdKxLzSUrBvQtz7U6+mYwuTTn3opWWNv\nbNjFdeL+JwKBgQC3UgZduDwFr1kY1kOD2Z2l9eeVqdqkloJf6Gmrz3SYODKGIIr/\nJDSmEwV8IaEhMXk9tBFRmglOWV188GHMQF+E2sRh2V8Y3kTTXRJmsHv7a7y1OdFA\nmzfn7Bp1BmsUeI3RraCnmRrdv1GKqdnbaFG11bC93xQaHk4U8NE62hzA+QKBgFZ3\nFY7W/AG9AfB/uzpFT0+lxamCqTDVLRKOkz3VdKQ1Vu3hhJfFYBLhjRMmWlMyqujy\nDNdz7y4BTblsbiEpY8l8sqIJH/jzOQKrR3JFYYCpIN0HVQ59hN7N73oLPv9zBqXP\nUBg53dsIMiiIzijwtnWKPMv6g90KwmpZJDcxxpoNAoGBAIerxe227Go1aizFX7xp\nyw5mZtqUhpK7KR18c5TEXlvf7CB2aza2xfen32SENoeLft0+vjVyH61sXNCrEiS/\nOHGEo3bZbMYZbO0asod3wEGbQW+U5bLdvICL5DX+c8QarWI7Pk6nWm+9TI7ijxgK\n4MDE8Ueet42kQWBhF0+49Svo\n-----END PRIVATE KEY-----'
-- what Meta's docs show: openssl genrsa -des3 (OpenSSL 3 writes encrypted PKCS#8), and its public key
\set key3 '-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQIjwexDp78w2wCAggA\nMAwGCCqGSIb3DQIJBQAwFAYIKoZIhvcNAwcECE6R45a0mf4kBIIEyN19MAtj/T0S\nNgKzUT8NmEVsmzdjsSw66im7QX5U0CHMFdvT1WanrHsWLPsXc++Rh3bi22HQTdGp\nt0dZANv7pFAAZPnxstVc5Moqzdv4MrgOH3tbvzusvI/X++cSaPh/MKfSs0+OUQ+P\nkQGokvQwH17qPhzE0YJ3OjxeQ8eUaRS9O8xVU4X2rX2FuqPVfd2QX+H0l/8epOnW\nZlqk14JROAqm4gflshgG2KPfAbItsI7jgsaYj8+s2f9ETX7MWywF5gRqxAyOJlsm\nXE39oL6aLgjVWanMdkxPbfyx5c8vT5OMTI0mpXsccV9DQGwcHIiNRTqtEZDL7grU\niW8eZKI7dTovL9xtzmdPJCrTIn9GA0L7vXCW2PqNHF9K2gBsjmaQgYXuxNLVjnD5\nlwF++ZPmK4EUpBJhQ62A5K5WtOd8R+VPrrUvMUXk9sLdVIgyhwJVZRrjKHfI0eUL\nmvOPW/m5g8GD2bQhswCWh5M6VMmzrlIChkM12YyW0ez4yyfaSo0YwG08sPtqfvlL\noI1mA8aMnVn3im9/TQFKDiiOaX0wsrkdPjaXL5OW8qOSog3OuT6UJF+D3BnV55tF\nDlwFB1PmqvpQaE4eVTxdO/Ok//7vhwmL4eoypKPSvqMGv6RvePQzzdA8RiqiIUXs\no+LTJjy2Tl55+rNMEgG1j5Q42mHzIMPTpiz45CKyE2WYv/QIA9WJccQZc1AtFg9a\nERVp8DbV0zwKDGpSFYIWihv0c7ilkn4XEYuJwxM48msVYfPtJvBPQL4YmtYLd/Ve\nGNkjFcfFiU+aXMeXFU2Zqxq1U9Aum/qh1MCNOMcem9+kEnqhNoB5bjktZE8n4dh6\ntY+s7EH274V/4QNyH9LCaQv7Prtg1fwehOPsR1ugbqW9kjd0JwLtCHUiN67Kelah\nDyd3AFyB4vFehiHJ3lFT7+MNZkY40T4luRPB9oR7G4qEvhMd37BcWDNkfAaZEHdW\n0N12LsXH8v73m7S2kmIiy4YaasYp7y058F7JMzfFzBVLq4K3DMUFxfoAW81RuGz2\nvwCy3SEFJRTosvrgFXrCBMR3ucVEmIXNM2b/zrcVB/IMocDbaPoikAq9mTFwj5Qa\nXeeUZinqBOxovLUhpvVjCE16g88pRcW1vIfRfdZA618MSwaWsKnYgxcFvkVZRXXQ\nWskm5XBtHJUAm7BxiYtI+vKOz9sv7JAbTCN3XLRIq/40jfhzO3wNP9CHKjwoQuzy\nfEDT+dXG+v4lVPpjDw5bsRP15G8Ri9DoDxVxgrwWbISMNkP3pHWIZsHEbq3OkaVs\nDNYhgQt5P4SLYATcf4e5Ro8+Mdekmz//5q0X01idtM/jY85zNBwDh+DeuaDHGMbj\n/SJOSI+/5u1pzNDU4ZtK28Jeh5g3Pp1hgF7pHSeex6wcIt+Z0+BsWLgOLi2p7wg3\nXuhHvQUxf9nmbCfSAAYTWpvD7+5DSR+94jq06Rjn1t0qXZtKHbJwPW4SXUcluPeM\nvsMZQNdZv9m4SVlmI/avzRiSWJpajHpokNITOwxrK7v91imjATzvjCJ89xy591zT\nRqXYjUj1hanwDUgH03fZWKnRJildRLcJ4mnj7zkZ2HIV4EbeOzj4JmaLbgp49wVm\n40Eg/F+vkFGvlBbDnzfXLw==\n-----END ENCRYPTED PRIVATE KEY-----'
\set public_key3 '-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA3qDMydcN3EKd0S2/Kc5t\nlsr9w7I5HXFQ1ZWxd+kmYRWp0QndzCYI3qYIFinObIzYrSQxLMCpOJuq83xudQLz\nyE8ytAsZ9v9mlmUFQmXUKTyi1ddWShTNY4wPjhl7zdGQA9FzBeUZlN06MU3PCZiE\nv5WBJ8TjAJoPmoUMV4/HoAL9PFe/zwR+emt7UwSmahNw6Gfk2bKDUK/Q1bZtK4AU\ncvZHOfBaZDXKDeFbcB0mrsfvZWirVI8AUj1I/FTDcZttBJRH0urHJs5TYGCqOwzs\nJKaMSzjN0ZsIB6zCjtzhpR8kzgnhi74AdjwVjMoCNF29NlKFLmT63PSXwOJmS+Ra\nPQIDAQAB\n-----END PUBLIC KEY-----'
\set short_key '-----BEGIN RSA PRIVATE KEY-----\nMIICXQIBAAKBgQDB+re9vGMiNZYiF3UeWO+R5qXJErYbCLN0wmQ244YPy+7/xneM\nqgz0/uSLk7JquM1hj3YXFhlL5ONgdAZWhU/WGMgh8HQjETYzHzH+OcbvJG9VhyiQ\n1V2td4MQ8rhr0t0Ht6NsRyXRIWzxAz1PaOgC0bYTpcbs2AylGBZqaJKdWwIDAQAB\nAoGATtptcNqw7cocwrUIbhK3KHc7M3bAwlKSKMeQ12M8LxW2jREPrgW+iKVJIJgk\nsg93pc4cshvQorJj3+SqYueEYQ2qkCMjdmJZjZef4nYu4tgXzkUM4T0BmRk83a8S\nlM8THUIdGfvxhRK4TEfDYJYzpqNHhF/VnNT8U1NyV3RwFYECQQDk3vv5hDqOKFka\nwohSDnse25oQgWP+nSyfMq+pqa8Mk/1JkeWgS5W53JywOq0JKZeiaT2g80Z+b1Ld\nu/hgjGnBAkEA2Pj1GEaFYAdscPyK8GxUFyff5L6oSjzMRQEpgRid6bchdgzfyWcJ\nRVKNMPLkFgnhtLalk0PIiLU8Ui/7rST2GwJBAMH7yT/L9kFlK1jGBvrdsTcPVD6n\nHJTCrP5l3IOGAYs8p5LCqQi657W3qcqogN7iNNaAMq8HYvlo66hqWHOkr0ECQQCX\nUys9vxGOpB7RvpD4ldUgQUM6Om8NN9IP3nuf+hdIxdykhN4fjak9nBG1LfI+HK46\nZ5ibWQ8nqZ9kguq5G6o5AkB4Y85tC3HzURmGzquVZgir1BBzy+xto95Djox2JAgO\nTixRHFFbwR2ys5JzsfgUqmy1qA5wrrasGlYIQ/CusJg9\n-----END RSA PRIVATE KEY-----'
\set ec_key '-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIEMK6W28IceKt0z018YAcJOn+ZyixggOI7y31uSIWA2boAoGCCqGSM49\nAwEHoUQDQgAEO5Tisg6r3RwGp172CbXKsKxQ5AJ3BfbHzLbCGZUVeyM4gIOcE/I3\naJxmLHm1ZovxVsn/c45T0DkCSbgT64PY1g==\n-----END EC PRIVATE KEY-----'
-- AES key 000102...0f wrapped with the public key by
-- openssl pkeyutl -encrypt -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256
\set wrapped 'o1WlPwdQAGyLk5SW4WXuPCKtlw6976YKnSooYb8nxvjbOxQdOH/W7Y868xZvWZ6uGZVod8F/zICnsUDHi4SJy4t9MTmvj7HnTZtp1WJ43ivOhD/Cdfltu2ScJwTWvOnTHRzewb8wgti2QkEOJWXq80W05C4zXPDoJAGea3E0eVMoEv89Y1nqch4B3mZNmlIf0/N/a8yeJxdTdNYmeHKK9C/Ut0zSjULgab4lFhcmSYYQiX05vJtv23ZqrCovpBnDQtIuag0IdpptZGRZTU5IFfqZGU99ZnOWDguQJaEqSE+vmC/uhBwy4Sa77zlU4UL40gRCdonYdE5ZefimHzw39g=='
-- the same with OAEP's default SHA-1: not what Meta sends
\set wrapped_sha1 'ayuY6TOGdDyBY+RoJfx0m65QeBesgIU8M0ZwC/qG14A98kSaMC+ir9Ey2K2CeBDRZGcUnh7YnEow7CNQ/gsSYnUPn78V6nVdEhKK16qYlEzmRG/6RCfk7hwgMBPAC7Qdrxzox7p4dzrSdIVjD5Nyw6CBiYcGEQBUwjxnihG+VpkPGc6ZcPO2r8wUbu5zSHRMSwdooO8o+rLIqHokAj15aJREngHOgsMpiQtgCV/pU7DbAPWLcStqHOPyLVSMJrRFE7R6M1Z3yo5JNatI78KOLIy7xLGwNDNKhSdoCvD3uyHs4IdAWmkwe3UU/3aMj7a0N2uUpa04gElkFFwQzKCowg=='

-- keys: the public key to upload, and the keys that are refused
SELECT payments.flows_public_key(:'key', 'regress-passphrase') = :'public_key' || E'\n' AS public_key_matches;
SELECT payments.flows_public_key(:'key3', 'regress-passphrase') = :'public_key3' || E'\n' AS pkcs8_public_key_matches;
SELECT payments.flows_public_key(:'key', 'wrong passphrase');
SELECT payments.flows_public_key(:'key');
SELECT payments.flows_public_key('not a key');
SELECT payments.flows_public_key(:'short_key');
SELECT payments.flows_public_key(:'ec_key');
SELECT payments.flows_public_key(NULL);

-- RSA-OAEP SHA-256: the AES key comes out; anything else is NULL (the 421 case)
SELECT payments.flows_unwrap_key(:'wrapped', :'key', 'regress-passphrase') AS aes_key;
SELECT payments.flows_unwrap_key(:'wrapped_sha1', :'key', 'regress-passphrase') IS NULL AS sha1_oaep_refused;
SELECT payments.flows_unwrap_key('not base64!', :'key', 'regress-passphrase') IS NULL AS not_base64;
SELECT payments.flows_unwrap_key(encode('\x0102'::bytea, 'base64'), :'key', 'regress-passphrase') IS NULL AS short_data;
SELECT payments.flows_unwrap_key(encode(decode(repeat('ab', 256), 'hex'), 'base64'), :'key', 'regress-passphrase') IS NULL AS garbage;
SELECT payments.flows_unwrap_key(:'wrapped', :'key', 'wrong passphrase');

-- AES-128-GCM with a 16-byte IV, against Node's crypto (createCipheriv('aes-128-gcm', key, iv)):
-- the request {"version":"3.0","action":"ping"} under IV a0a1...af, and the ping reply under the
-- flipped IV 5f5e...50
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'RXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIg==') AS request;
SELECT payments.flows_encrypt_response('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'{"data": {"status": "active"}}') = 'FusEzBdzvQDlusKsgcevKW9Re/NSFUisz6hu4toB7n6+i3awTECgxSkF/1u6Ng==' AS reply_matches_node;
-- a changed tag or ciphertext, the wrong IV or key, a 12-byte IV, base64 that is not: NULL
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'RXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIw==') IS NULL AS tag_changed;
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'SXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIg==') IS NULL AS ciphertext_changed;
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'X15dXFtaWVhXVlVUU1JRUA==',
	'RXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIg==') IS NULL AS wrong_iv;
SELECT payments.flows_decrypt_request('\x0f0102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'RXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIg==') IS NULL AS wrong_key;
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrKw=',
	'RXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIg==') IS NULL AS iv_of_12_bytes;
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'RXsgKMV2vzp9Rg') IS NULL AS shorter_than_a_tag;
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	'not*base64') IS NULL AS not_base64;
-- bytes that are not UTF-8 (0xff), sealed under the IV: NULL, not text
SELECT payments.flows_decrypt_request('\x000102030405060708090a0b0c0d0e0f', 'oKGio6SlpqeoqaqrrK2urw==',
	payments.flows_encrypt_response('\x000102030405060708090a0b0c0d0e0f', 'X15dXFtaWVhXVlVUU1JRUA==',
		convert_from('\x7b7d', 'UTF8'))) AS utf8_round_trip;
SELECT payments.flows_decrypt_request('\x0001', 'oKGio6SlpqeoqaqrrK2urw==', 'AAAA');
SELECT payments.flows_encrypt_response('\x000102030405060708090a0b0c0d0e0f', 'AAAA', '{}');

-- configuration: a meta provider with its app secret and the test key
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt"}');
SELECT payments.register_provider('flows-hooks', 'standard');
SELECT payments.add_secret('flows-wa', 'regress_app_secret') IS NOT NULL AS secret_added;
SELECT payments.add_flow_key('flows-wa', :'key', 'regress-passphrase') AS key_id \gset
SELECT payments.add_flow_key('flows-hooks', :'key', 'regress-passphrase');
SELECT payments.add_flow_key('nobody', :'key', 'regress-passphrase');
SELECT payments.add_flow_key('flows-wa', :'key', 'wrong');
SELECT provider, public_key = :'public_key' || E'\n' AS public_key_kept, revoked_at IS NULL AS live
  FROM payments.flow_keys;
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "min_amount": 5, "max_amount": 2}');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "max_amount": "100"}');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "min_amount": 0}');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "max_amount": 100}');

-- X-Hub-Signature-256 of a body with the app secret (pgcrypto's hmac)
CREATE FUNCTION pg_temp.signed(body bytea) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('x-hub-signature-256', 'sha256=' || encode(hmac(body, 'regress_app_secret', 'sha256'), 'hex'))
$$;
-- A request as Meta builds it: the plaintext sealed with AES key 000102...0f under IV a0a1...af
-- (flows_encrypt_response with the flipped IV seals under the IV itself), the wrapped key
CREATE FUNCTION pg_temp.envelope(plaintext text, wrapped text) RETURNS text LANGUAGE sql AS $$
	SELECT jsonb_build_object('encrypted_flow_data',
		payments.flows_encrypt_response('\x000102030405060708090a0b0c0d0e0f', 'X15dXFtaWVhXVlVUU1JRUA==', plaintext),
		'encrypted_aes_key', wrapped, 'initial_vector', 'oKGio6SlpqeoqaqrrK2urw==')::text
$$;
-- Sends a signed request and decrypts the answer of a 200 or 427 with the flipped IV (every request
-- here has the same AES key: each is made a new one to the replay check, below)
CREATE FUNCTION pg_temp.exchange(plaintext text, wrapped text)
RETURNS TABLE (http_status integer, answer jsonb, plain_body text) LANGUAGE sql AS $$
	DELETE FROM payments.flow_request_keys;
	SELECT x.http_status,
		   CASE WHEN x.http_status IN (200, 427) THEN payments.flows_decrypt_request(
			   '\x000102030405060708090a0b0c0d0e0f', 'X15dXFtaWVhXVlVUU1JRUA==', x.response)::jsonb END,
		   CASE WHEN x.http_status NOT IN (200, 427) THEN x.response END
	  FROM (SELECT pg_temp.envelope(plaintext, wrapped) AS body) AS e,
		   payments.flows_exchange('flows-wa', pg_temp.signed(convert_to(e.body, 'UTF8')), convert_to(e.body, 'UTF8'), '192.0.2.7', 'req-1') AS x
$$;

-- ping, as Meta's health check sends it
SELECT * FROM pg_temp.exchange('{"version": "3.0", "action": "ping"}', :'wrapped');
-- a request replayed (its AES key answered before: its signature has no time) is answered 421, not
-- answered again: an answer of another text under the same key and IV would give away the first
-- (a donor's phone and amount) and GCM's key; Meta encrypts again with a new key.  Recorded
SELECT pg_temp.envelope('{"version": "3.0", "action": "ping"}', :'wrapped') AS replayed \gset
SELECT http_status, outcome, response
  FROM payments.flows_exchange('flows-wa', pg_temp.signed(convert_to(:'replayed', 'UTF8')), convert_to(:'replayed', 'UTF8'));
SELECT reason, detail FROM payments.rejections WHERE provider = 'flows-wa' AND reason = 'flows_key_replayed';
-- 404: no such provider, or not of kind meta
SELECT * FROM payments.flows_exchange('nobody', '{}', '\x7b7d');
SELECT * FROM payments.flows_exchange('flows-hooks', '{}', '\x7b7d');
-- a NULL body is an error, not a verdict to pass
SELECT * FROM payments.flows_exchange('flows-wa', pg_temp.signed('\x7b7d'), NULL);
-- 432: no signature, a malformed one, a wrong one (before anything is decrypted)
SELECT * FROM payments.flows_exchange('flows-wa', '{}', '\x7b7d');
SELECT * FROM payments.flows_exchange('flows-wa', '{"x-hub-signature-256": "sha256=abc"}', '\x7b7d');
SELECT * FROM payments.flows_exchange('flows-wa', pg_temp.signed(convert_to('{"a": 1}', 'UTF8')), convert_to('{"a": 2}', 'UTF8'));
-- 400: signed, but not the envelope
SELECT * FROM payments.flows_exchange('flows-wa', pg_temp.signed(convert_to('[1]', 'UTF8')), convert_to('[1]', 'UTF8'));
SELECT * FROM payments.flows_exchange('flows-wa', pg_temp.signed(convert_to('{"encrypted_flow_data": 1, "encrypted_aes_key": "", "initial_vector": ""}', 'UTF8')),
	convert_to('{"encrypted_flow_data": 1, "encrypted_aes_key": "", "initial_vector": ""}', 'UTF8'));
SELECT * FROM payments.flows_exchange('flows-wa', pg_temp.signed('\xff'), '\xff');
-- 421: the AES key wrapped with SHA-1 OAEP, or with no live key; data that fails its tag
SELECT * FROM pg_temp.exchange('{"version": "3.0", "action": "ping"}', :'wrapped_sha1');
SELECT x.http_status, x.response FROM (SELECT jsonb_build_object('encrypted_flow_data',
		'RXsgKMV2vzp9Rg/3Nn9QNv1AIVWqxNBHbiobq+p97njG/oEBr518kbftZkNYkqEcIw==',
		'encrypted_aes_key', :'wrapped', 'initial_vector', 'oKGio6SlpqeoqaqrrK2urw==')::text AS body) AS e,
	payments.flows_exchange('flows-wa', pg_temp.signed(convert_to(e.body, 'UTF8')), convert_to(e.body, 'UTF8')) AS x;
-- 400: decrypts, but is not a JSON object; an action the endpoint does not know
SELECT * FROM pg_temp.exchange('"ping"', :'wrapped');
-- nesting deeper than the stack allows, in the request or in the envelope: 400, not an error
SELECT * FROM pg_temp.exchange(repeat('[', 100000), :'wrapped');
SELECT * FROM payments.flows_exchange('flows-wa', pg_temp.signed(convert_to(repeat('[', 100000), 'UTF8')),
	convert_to(repeat('[', 100000), 'UTF8'));
SELECT * FROM pg_temp.exchange('{"version": "3.0", "action": "navigate"}', :'wrapped');
SELECT provider, outcome, reason, detail, source_ip, request_id, body_size
  FROM payments.rejections ORDER BY id;

-- a client's error notification is acknowledged
SELECT * FROM pg_temp.exchange('{"version": "3.0", "action": "data_exchange", "flow_token": "x",
	"data": {"error": "invalid-screen-transition", "error_message": "..."}}', :'wrapped');

-- flow tokens: 427 (encrypted error_msg) for an unknown one
SELECT * FROM pg_temp.exchange('{"version": "3.0", "action": "INIT", "flow_token": "ft_unknown_token_0000"}', :'wrapped');
SELECT payments.issue_flow_token('flows-wa', '+263 77 123 4567') AS token \gset
SELECT :'token' ~ '^ft_[0-9a-f]{32}$' AS token_shape, wa_id, expires_at - created_at AS valid_for
  FROM payments.flow_tokens WHERE token = :'token';
SELECT payments.issue_flow_token('nobody', '263771234567');
SELECT payments.issue_flow_token('flows-hooks', '263771234567');
SELECT payments.issue_flow_token('flows-wa', 'abc');
-- rows the constraints would refuse are refused first, with errors that show neither the
-- key's passphrase nor the token (a failed constraint shows the row, in the server log too)
UPDATE payments.flow_keys SET created_at = NULL WHERE id = :key_id;
-- a key edited by hand must still open with its passphrase and give its public key (one that
-- could not be read failed every request of its provider, instead of 421)
UPDATE payments.flow_keys SET passphrase = 'changed' WHERE id = :key_id;
UPDATE payments.flow_keys SET passphrase = NULL WHERE id = :key_id;
UPDATE payments.flow_keys SET public_key = replace(public_key, 'A', 'B') WHERE id = :key_id;
INSERT INTO payments.flow_keys (provider, private_key, public_key) VALUES ('flows-wa', :'key', 'x');
UPDATE payments.flow_keys SET passphrase = passphrase WHERE id = :key_id;
INSERT INTO payments.flow_tokens (token, provider, wa_id, expires_at)
VALUES (:'token', 'flows-wa', '263771234567', now() + interval '1 hour');
UPDATE payments.flow_tokens SET expires_at = created_at - interval '1 second' WHERE token = :'token';
UPDATE payments.flow_tokens SET wa_id = NULL WHERE token = :'token';
UPDATE payments.flow_tokens SET wa_id = '+263' WHERE token = :'token';
INSERT INTO payments.flow_tokens (token, provider, wa_id, expires_at)
VALUES ('ft_short', 'flows-wa', '263771234567', now() + interval '1 hour');
SELECT payments.issue_flow_token('flows-wa', '263771234567', interval '31 days');
SELECT payments.issue_flow_token('flows-wa', '263771234567', interval '1 second');

-- INIT and BACK open the form; the limits come from the settings (max 100 above)
SELECT http_status, answer FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'token'), :'wrapped');
SELECT http_status, answer -> 'screen' AS screen FROM pg_temp.exchange(format('{"version": "3.0", "action": "BACK", "flow_token": "%s"}', :'token'), :'wrapped');

-- data_exchange of DONATE: each problem answers the same screen with a message
CREATE FUNCTION pg_temp.donate(token text, form jsonb, screen text DEFAULT 'DONATE')
RETURNS TABLE (http_status integer, screen text, data jsonb, plain_body text) LANGUAGE sql AS $$
	SELECT x.http_status, x.answer ->> 'screen',
		   CASE WHEN x.answer ->> 'screen' = 'DONATE' THEN x.answer -> 'data' -> 'error_message'
				ELSE coalesce(x.answer -> 'data', x.answer) END, x.plain_body
	  FROM pg_temp.exchange(jsonb_build_object('version', '3.0', 'action', 'data_exchange', 'screen', screen,
			   'flow_token', token, 'data', form)::text,
			   'o1WlPwdQAGyLk5SW4WXuPCKtlw6976YKnSooYb8nxvjbOxQdOH/W7Y868xZvWZ6uGZVod8F/zICnsUDHi4SJy4t9MTmvj7HnTZtp1WJ43ivOhD/Cdfltu2ScJwTWvOnTHRzewb8wgti2QkEOJWXq80W05C4zXPDoJAGea3E0eVMoEv89Y1nqch4B3mZNmlIf0/N/a8yeJxdTdNYmeHKK9C/Ut0zSjULgab4lFhcmSYYQiX05vJtv23ZqrCovpBnDQtIuag0IdpptZGRZTU5IFfqZGU99ZnOWDguQJaEqSE+vmC/uhBwy4Sa77zlU4UL40gRCdonYdE5ZefimHzw39g==') AS x
$$;
SELECT * FROM pg_temp.donate(:'token', '{"amount": "abc", "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": "10.505", "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": "0.99", "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": 100.01, "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
-- amounts per currency: the form shows the widest range, the chosen currency's is checked
BEGIN;
UPDATE payments.providers SET settings = settings || '{"max_amount": {"USD": 100, "ZWG": 3000}}' WHERE name = 'flows-wa';
SELECT http_status, data -> 'data' ->> 'min_amount' AS min_amount, data -> 'data' ->> 'max_amount' AS max_amount
  FROM payments.flows_answer('flows-wa', jsonb_build_object('action', 'INIT', 'flow_token', :'token')) AS a (http_status, data);
SELECT * FROM pg_temp.donate(:'token', '{"amount": 1000, "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": 1000, "currency": "ZWG", "method": "ecocash", "phone": "0771234567"}');
ROLLBACK;
SELECT * FROM pg_temp.donate(:'token', '{"amount": "10", "currency": "EUR", "method": "ecocash", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": "10", "currency": "USD", "method": "card", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": "10", "currency": "USD", "method": "ecocash", "phone": "12345"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": "10", "currency": "USD", "method": "onemoney", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": true, "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT * FROM pg_temp.donate(:'token', '{}');
SELECT * FROM pg_temp.donate(:'token', '[]');
SELECT * FROM pg_temp.donate(:'token', '{}', 'ELSEWHERE');
-- valid: on to CONFIRM, the phone as E.164 digits, the amount with two decimals
SELECT * FROM pg_temp.donate(:'token', '{"amount": "10.5", "currency": "USD", "method": "ecocash", "phone": "077 123 4567"}');
-- the number read as the chat reads one typed (payments.chat_local_phone): with the 0 after 263, 00
-- for +, without the first 0, non-breaking spaces
SELECT replace(typed, E'\u00a0', '<nbsp>') AS typed, x.screen, x.data ->> 'phone' AS phone
  FROM unnest(ARRAY['+263 (0)77 123 4567', '00263771234567', '002630771234567', '771234567', E'077\u00a0123\u00a04567']) AS typed,
	   pg_temp.donate(:'token', jsonb_build_object('amount', '10', 'currency', 'USD', 'method', 'ecocash', 'phone', typed)) x;
-- TeleCash is paid on Paynow's page from a link: no number is asked, one sent is ignored
SELECT * FROM pg_temp.donate(:'token', '{"amount": 100, "currency": "ZWG", "method": "telecash", "phone": "+263 73 123 4567"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": 100, "currency": "ZWG", "method": "telecash"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": 100, "currency": "ZWG", "method": "telecash", "phone": "not a number"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": 100, "currency": "ZWG", "method": "ecocash"}');
SELECT * FROM pg_temp.donate(:'token', '{"amount": "1", "currency": "USD", "method": "onemoney", "phone": "263711234567"}');
SELECT count(*) AS submissions_before_confirm FROM payments.flow_submissions;
-- CONFIRM validates again, stores the request once, and closes the Flow
SELECT * FROM pg_temp.donate(:'token', '{"amount": "1000", "currency": "USD", "method": "ecocash", "phone": "263771234567"}', 'CONFIRM');
SELECT http_status, screen, data -> 'extension_message_response' -> 'params' ->> 'flow_token' = :'token' AS token_returned
  FROM pg_temp.donate(:'token', '{"amount": "10.50", "currency": "USD", "method": "ecocash", "phone": "263771234567"}', 'CONFIRM');
SELECT provider, flow_token = :'token' AS same_token, wa_id, amount, currency, method, phone
  FROM payments.flow_submissions;
-- a retry of the final submit answers the same submission; anything else is over
SELECT (SELECT (data -> 'extension_message_response' -> 'params' ->> 'submission_id')::bigint
		  FROM pg_temp.donate(:'token', '{"amount": "10.50", "currency": "USD", "method": "ecocash", "phone": "263771234567"}', 'CONFIRM'))
	 = (SELECT id FROM payments.flow_submissions) AS same_submission;
SELECT count(*) AS submissions FROM payments.flow_submissions;
SELECT http_status, answer FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'token'), :'wrapped');
-- an expired token: refused, but for the final submit retried (it answers as the first did);
-- and a token of another provider
UPDATE payments.flow_tokens SET created_at = now() - interval '2 days', expires_at = now() - interval '1 second'
 WHERE token = :'token';
SELECT http_status, screen FROM pg_temp.donate(:'token', '{"amount": "10.50", "currency": "USD", "method": "ecocash", "phone": "263771234567"}', 'CONFIRM');
SELECT http_status, answer FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'token'), :'wrapped');
SELECT http_status FROM pg_temp.donate(:'token', '{"amount": "10.50", "currency": "USD", "method": "ecocash", "phone": "263771234567"}');
SELECT payments.register_provider('flows-wa2', 'meta', '{"verify_token": "vt"}');
SELECT payments.issue_flow_token('flows-wa2', '263771234567') AS other_token \gset
-- a provider without a live app secret cannot be verified: 432
SELECT * FROM payments.flows_exchange('flows-wa2', pg_temp.signed('\x7b7d'), '\x7b7d');
SELECT reason, detail FROM payments.rejections WHERE provider = 'flows-wa2';
SELECT http_status, answer FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'other_token'), :'wrapped');

-- key rotation: every live key is tried, newest first; revoking the one that opens the request gives 421
SELECT payments.add_flow_key('flows-wa', :'short_key');
SELECT payments.add_flow_key('flows-wa', :'key2') > :key_id AS second_key;
SELECT http_status, answer FROM pg_temp.exchange('{"version": "3.0", "action": "ping"}', :'wrapped');
SELECT payments.revoke_flow_key(:key_id);
SELECT payments.revoke_flow_key(:key_id);
SELECT payments.revoke_flow_key(-1);
SELECT http_status, plain_body FROM pg_temp.exchange('{"version": "3.0", "action": "ping"}', :'wrapped');
SELECT payments.add_flow_key('flows-wa', :'key', 'regress-passphrase') > :key_id AS re_added;
SELECT http_status, answer FROM pg_temp.exchange('{"version": "3.0", "action": "ping"}', :'wrapped');

-- when the meta provider maps the currency to a Paynow provider, the submit starts the payment
-- as a confirmed chat donation does: pending with our reference, its initiation queued, the donor told
SELECT payments.register_provider('flows-pn', 'paynow', '{"integration_id": "1201", "result_url": "https://clinic.example/webhooks/flows-pn", "return_url": "https://clinic.example/thanks",
	"auth_email": "donations@clinic.example", "currency": "USD"}');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"USD": "flows-pn"},
	"purposes": ["Maternity ward", "Medicines"]}');
-- the number has written in the chat before: its session knows the donor's WhatsApp profile name
INSERT INTO payments.chat_sessions (provider, wa_id, name, tokens) VALUES ('flows-wa', '263771234567', 'Tendai Moyo', 10);
SELECT payments.issue_flow_token('flows-wa', '263771234567') AS paying_token \gset
SELECT http_status, screen FROM pg_temp.donate(:'paying_token', '{"amount": "12", "currency": "USD", "method": "ecocash", "phone": "0771234567"}', 'CONFIRM');
-- the donor's name is the chat's, the purpose the chat's first (the form asks for none)
SELECT p.donor_name, p.metadata ->> 'purpose' AS purpose, d.purpose AS chat_purpose
  FROM payments.flow_submissions s JOIN payments.payments p ON p.id = s.payment_id
  JOIN payments.chat_donations d ON d.payment_id = p.id
 WHERE s.flow_token = :'paying_token';
SELECT p.provider, p.status, p.amount, p.currency, p.method, p.donor_phone, p.reference ~ '^WA-[0-9]{8}-[0-9]+$' AS our_reference,
	   i.method AS initiation_method, i.phone AS initiation_phone
  FROM payments.flow_submissions s JOIN payments.payments p ON p.id = s.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id
 WHERE s.flow_token = :'paying_token';
SELECT recipient, payload -> 'text' ->> 'body' ~ 'payment request for 12.00 USD' AS donor_told
  FROM payments.outbox WHERE provider = 'flows-wa';
-- a retried submit starts nothing more
SELECT http_status FROM pg_temp.donate(:'paying_token', '{"amount": "12", "currency": "USD", "method": "ecocash", "phone": "0771234567"}', 'CONFIRM');
SELECT count(*) AS flow_payments FROM payments.payments WHERE provider = 'flows-pn';
-- a submit the chat refuses (a number asked by three other chats today) is not kept as waiting:
-- the form shows why, and nothing is started
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, metadata, status_at)
SELECT 'flows-pn', 'REF-LIMIT-' || n, 'pending', 1, 'USD', '{}', now() FROM generate_series(1, 3) n;
INSERT INTO payments.paynow_initiations (payment_id, provider, reference, method, phone)
SELECT p.id, 'flows-pn', p.provider_ref, 'ecocash', '0772223334' FROM payments.payments p
 WHERE p.provider_ref LIKE 'REF-LIMIT-%';
INSERT INTO payments.chat_donations (payment_id, provider, wa_id)
SELECT p.id, 'flows-wa', '26377000000' || n FROM payments.payments p, generate_series(1, 3) n
 WHERE p.provider_ref = 'REF-LIMIT-' || n;
SELECT payments.issue_flow_token('flows-wa', '263771234567') AS limited_token \gset
SELECT http_status, screen, data AS error
  FROM pg_temp.donate(:'limited_token', '{"amount": "5", "currency": "USD", "method": "ecocash", "phone": "0772223334"}', 'CONFIRM');
SELECT count(*) AS kept FROM payments.flow_submissions WHERE flow_token = :'limited_token';
-- a chat that starts the payments offers its own currencies and methods, and takes no other
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"USD": "flows-pn"}, "methods": ["ecocash", "card"]}');
SELECT payments.issue_flow_token('flows-wa', '263771234567') AS narrow_token \gset
SELECT http_status, answer -> 'data' -> 'currencies' AS currencies, answer -> 'data' -> 'methods' AS methods
  FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'narrow_token'), :'wrapped');
SELECT screen, data AS error FROM pg_temp.donate(:'narrow_token', '{"amount": "5", "currency": "ZWG", "method": "ecocash", "phone": "0771234567"}');
SELECT screen, data AS error FROM pg_temp.donate(:'narrow_token', '{"amount": "5", "currency": "USD", "method": "telecash"}');
-- a chat offering no method the form takes (card only): the form says so, and takes nothing
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"USD": "flows-pn"}, "methods": ["card"]}');
SELECT http_status, answer -> 'data' ->> 'error_message' AS error, answer -> 'data' -> 'methods' AS methods
  FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'narrow_token'), :'wrapped');
SELECT screen, data AS error
  FROM pg_temp.donate(:'narrow_token', '{"amount": "5", "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT http_status, screen, data AS error
  FROM pg_temp.donate(:'narrow_token', '{"amount": "5", "currency": "USD", "method": "bitcoin", "phone": "0771234567"}', 'CONFIRM');
SELECT count(*) AS kept FROM payments.flow_submissions WHERE flow_token = :'narrow_token';
-- a chat whose currencies are none the form takes: no range, and the form's fields stay strings
SELECT payments.register_provider('flows-pn-zar', 'paynow', '{"integration_id": "1202", "result_url": "https://clinic.example/webhooks/flows-pn-zar", "return_url": "https://clinic.example/thanks",
	"auth_email": "donations@clinic.example", "currency": "ZAR"}');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"ZAR": "flows-pn-zar"}}');
SELECT http_status, answer -> 'data' -> 'currencies' AS currencies, answer -> 'data' -> 'min_amount' AS min_amount,
	   answer -> 'data' -> 'max_amount' AS max_amount, answer -> 'data' ->> 'error_message' AS error
  FROM pg_temp.exchange(format('{"version": "3.0", "action": "INIT", "flow_token": "%s"}', :'narrow_token'), :'wrapped');
SELECT screen, data AS error
  FROM pg_temp.donate(:'narrow_token', '{"amount": "5", "currency": "USD", "method": "ecocash", "phone": "0771234567"}');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"USD": "flows-pn"}}');
-- a repeated final submit answers the same submission even after the settings changed: the
-- donation it made is not asked to be corrected
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"USD": "flows-pn"}, "max_amount": 10}');
SELECT http_status, screen,
	   (data -> 'extension_message_response' -> 'params' ->> 'submission_id')::bigint
		= (SELECT s.id FROM payments.flow_submissions s WHERE s.flow_token = :'paying_token') AS same_submission
  FROM pg_temp.donate(:'paying_token', '{"amount": "12", "currency": "USD", "method": "ecocash", "phone": "0771234567"}', 'CONFIRM');
SELECT payments.register_provider('flows-wa', 'meta', '{"verify_token": "vt", "paynow_providers": {"USD": "flows-pn"}}');
-- TeleCash: stored without a number, its initiation on the web checkout, the donor told a link comes
SELECT payments.issue_flow_token('flows-wa', '263772345678') AS telecash_token \gset
SELECT http_status, screen FROM pg_temp.donate(:'telecash_token', '{"amount": "7", "currency": "USD", "method": "telecash"}', 'CONFIRM');
SELECT s.method, s.phone, p.method AS payment_method, p.donor_phone, i.method AS initiation_method, i.phone AS initiation_phone,
	   payments.paynow_web_checkout(i.method) AS web_checkout
  FROM payments.flow_submissions s JOIN payments.payments p ON p.id = s.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id
 WHERE s.flow_token = :'telecash_token';
-- no purposes configured: the default one; a number the chat has never seen: no name
SELECT p.donor_name, p.metadata ->> 'purpose' AS purpose, d.purpose AS chat_purpose
  FROM payments.flow_submissions s JOIN payments.payments p ON p.id = s.payment_id
  JOIN payments.chat_donations d ON d.payment_id = p.id
 WHERE s.flow_token = :'telecash_token';
SELECT payload -> 'text' ->> 'body' ~ 'Paynow payment link to pay 7.00 USD with TeleCash' AS donor_told
  FROM payments.outbox WHERE provider = 'flows-wa' ORDER BY id DESC LIMIT 1;
-- a number is still required of the others
\set VERBOSITY terse
INSERT INTO payments.flow_submissions (provider, flow_token, wa_id, amount, currency, method)
VALUES ('flows-wa', 'ft_no_number', '263771234567', 5, 'USD', 'ecocash');
\set VERBOSITY default
-- a user whose phone number Meta withholds (WhatsApp usernames) gets a token for their
-- business-scoped user id (BSUID): the form has no number of theirs to offer (phone ""), one is
-- typed; the payment has no donor phone (the BSUID is in its metadata), and the donor is told by
-- "recipient" (no "to")
SELECT payments.issue_flow_token('flows-wa', 'ZW.1502576394655843') AS bsuid_token \gset
SELECT wa_id FROM payments.flow_tokens WHERE token = :'bsuid_token';
SELECT http_status, data -> 'data' ->> 'phone' AS phone
  FROM payments.flows_answer('flows-wa', jsonb_build_object('action', 'INIT', 'flow_token', :'bsuid_token')) AS a (http_status, data);
SELECT http_status, screen FROM pg_temp.donate(:'bsuid_token', '{"amount": "6", "currency": "USD", "method": "ecocash", "phone": "0779 000 002"}', 'CONFIRM');
SELECT s.wa_id, s.phone, p.donor_phone, p.donor_key, p.metadata ->> 'whatsapp_user_id' AS whatsapp_user_id,
	   i.phone AS initiation_phone
  FROM payments.flow_submissions s JOIN payments.payments p ON p.id = s.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id
 WHERE s.flow_token = :'bsuid_token';
SELECT recipient, payload ->> 'recipient' AS recipient_field, payload ? 'to' AS has_to,
	   payload -> 'text' ->> 'body' ~ 'payment request for 6.00 USD to 0779000002' AS donor_told
  FROM payments.outbox WHERE provider = 'flows-wa' ORDER BY id DESC LIMIT 1;
SELECT payments.issue_flow_token('flows-wa', 'zw.1502576394655843');
DELETE FROM payments.outbox WHERE provider = 'flows-wa';
DELETE FROM payments.paynow_initiations WHERE provider = 'flows-pn';
DELETE FROM payments.flow_submissions WHERE provider = 'flows-wa';
DELETE FROM payments.chat_donations WHERE provider = 'flows-wa';
DELETE FROM payments.status_history WHERE payment_id IN (SELECT id FROM payments.payments WHERE provider = 'flows-pn');
DELETE FROM payments.payments WHERE provider = 'flows-pn';

-- who may do what: the shim's role calls flows_exchange and reads nothing
SELECT p.proname, has_function_privilege('payments_ingest', p.oid, 'EXECUTE') AS ingest,
	   has_function_privilege('payments_admin', p.oid, 'EXECUTE') AS admin
  FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace AND p.proname ~ 'flow'
 ORDER BY p.proname;
SELECT c.relname, has_table_privilege('payments_ingest', c.oid, 'SELECT') AS ingest_select,
	   has_table_privilege('payments_analyst', c.oid, 'SELECT') AS analyst_select,
	   has_table_privilege('payments_admin', c.oid, 'SELECT') AS admin_select
  FROM pg_class c WHERE c.relnamespace = 'payments'::regnamespace AND c.relname ~ '^flow' AND c.relkind = 'r'
 ORDER BY c.relname;

-- leave nothing behind for the tests that follow (keys, tokens, submissions and rejections go with them)
DELETE FROM payments.providers WHERE name LIKE 'flows-%';
SELECT (SELECT count(*) FROM payments.flow_keys) + (SELECT count(*) FROM payments.flow_tokens)
	 + (SELECT count(*) FROM payments.flow_submissions) AS rows_left;
