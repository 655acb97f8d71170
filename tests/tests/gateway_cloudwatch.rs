//! CloudWatch alarms through SNS end to end on the real stack (K-GW-3):
//! messages signed by the test PKI exactly as SNS signs them, posted as SNS
//! posts them (text/plain, no bearer token), turned into requests and
//! resolutions; and every way a message is refused, with its status code.

use kubernaut_api::SignalSource;
use kubernaut_e2e::{
    Gateway, SNS_TOPIC, SnsDelivery, Stack, cloudwatch_alarm, deployment_with_pods,
    managed_namespace, post_sns, post_with, requests, unique,
};
use kubernaut_gateway::metrics::SubscriptionLabels;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_from_sns_opens_a_request_and_its_ok_resolves_it() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "cw-alarm", "staging").await?;
    deployment_with_pods(&admin, &ns, "cart", 1).await?;
    let gw = Gateway::start(stack, Some(&stack.redis_url), "gw-cw").await?;
    let url = gw.url("cloudwatch");
    let dims = [
        ("ClusterName", "prod"),
        ("Namespace", ns.as_str()),
        ("PodName", "cart"),
    ];

    let alarm = SnsDelivery::notification(
        &unique("msg"),
        &cloudwatch_alarm("cart-cpu", "ALARM", &dims),
    );
    let r = post_sns(&url, "Notification", alarm.body()).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["result"], "created");
    let rrs = requests(&admin, &ns).await?;
    assert_eq!(rrs.len(), 1);
    let spec = &rrs[0].spec;
    assert_eq!(spec.source, SignalSource::Cloudwatch);
    assert_eq!(spec.signal_name, "cart-cpu");
    assert_eq!(spec.target.kind, "Deployment");
    assert_eq!(spec.target.name, "cart");

    // SNS re-delivers with the same MessageId: a duplicate.
    let r = post_sns(&url, "Notification", alarm.body()).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    // A new ALARM on the same Deployment, signed with version 1: counted on
    // the open request.
    let v1 = SnsDelivery {
        signature_version: "1",
        ..SnsDelivery::notification(
            &unique("msg"),
            &cloudwatch_alarm("cart-mem", "ALARM", &dims),
        )
    };
    let r = post_sns(&url, "Notification", v1.body()).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    // Every delivery counts, the re-delivery included.
    assert_eq!(r.body["occurrenceCount"], 3);

    // The OK of an alarm that did not open the request resolves nothing.
    let other_ok =
        SnsDelivery::notification(&unique("msg"), &cloudwatch_alarm("cart-disk", "OK", &dims));
    let r = post_sns(&url, "Notification", other_ok.body()).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], "resolved");
    assert!(r.body.get("request").is_none(), "{}", r.text);

    let ok = SnsDelivery::notification(&unique("msg"), &cloudwatch_alarm("cart-cpu", "OK", &dims));
    let r = post_sns(&url, "Notification", ok.body()).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], "resolved");
    assert_eq!(
        r.body["request"],
        rrs[0].metadata.name.clone().unwrap_or_default()
    );
    let rrs = requests(&admin, &ns).await?;
    assert_eq!(rrs.len(), 1, "a resolution never opens a request");
    assert!(
        rrs[0]
            .status
            .as_ref()
            .and_then(|s| s.signal_resolution.as_ref())
            .is_some(),
        "the OK is recorded on the request"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_sns_message_gets_its_status_and_opens_nothing() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "cw-refuse", "staging").await?;
    deployment_with_pods(&admin, &ns, "cart", 1).await?;
    let gw = Gateway::start(stack, None, "gw-cw-refuse").await?;
    let url = gw.url("cloudwatch");
    let dims = [("Namespace", ns.as_str()), ("PodName", "cart")];
    let alarm = || {
        SnsDelivery::notification(
            &unique("msg"),
            &cloudwatch_alarm("cart-cpu", "ALARM", &dims),
        )
    };

    let good = alarm().body();
    let r = post_with(
        &url,
        "application/xml",
        good.clone(),
        &[("x-amz-sns-message-type", "Notification")],
    )
    .await?;
    assert_eq!(r.status, 415, "{}", r.text);
    let r = post_with(&url, "text/plain", good.clone(), &[]).await?;
    assert_eq!(r.status, 400, "no message-type header: {}", r.text);
    let r = post_sns(&url, "SubscriptionConfirmation", good.clone()).await?;
    assert_eq!(r.status, 400, "header and body disagree: {}", r.text);
    let r = post_sns(&url, "Notification", "not json").await?;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json");

    let cases: Vec<(&str, String, u16)> = vec![
        (
            "a topic not in the allow-list",
            SnsDelivery {
                topic_arn: "arn:aws:sns:eu-west-1:123456789012:other".into(),
                ..alarm()
            }
            .body(),
            403,
        ),
        (
            "a certificate URL that is not SNS's",
            SnsDelivery {
                cert_url: "https://certs.example.com/SimpleNotificationService.pem".into(),
                ..alarm()
            }
            .body(),
            403,
        ),
        (
            "a single flipped byte",
            alarm().body().replacen("cart-cpu", "cart-cpv", 1),
            403,
        ),
        (
            "a key of the same CA that is not trusted",
            SnsDelivery {
                key: "intruder",
                ..alarm()
            }
            .body(),
            403,
        ),
        (
            "a Timestamp outside the replay window",
            SnsDelivery {
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                ..alarm()
            }
            .body(),
            403,
        ),
        (
            "an unknown signature version",
            SnsDelivery {
                signature_version: "3",
                ..alarm()
            }
            .body(),
            400,
        ),
        (
            "a Message that is not an alarm",
            SnsDelivery::notification(&unique("msg"), "hello").body(),
            400,
        ),
    ];
    for (what, body, want) in cases {
        let r = post_sns(&url, "Notification", body).await?;
        assert_eq!(r.status, want, "{what}: {}", r.text);
        assert_eq!(r.content_type, "application/problem+json", "{what}");
    }

    // Authenticated but not actionable: 200 rejected, as for other sources.
    let insufficient = SnsDelivery::notification(
        &unique("msg"),
        &cloudwatch_alarm("cart-cpu", "INSUFFICIENT_DATA", &dims),
    );
    let r = post_sns(&url, "Notification", insufficient.body()).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["reason"], "not_alarm");
    let nowhere = SnsDelivery::notification(
        &unique("msg"),
        &cloudwatch_alarm("rds-cpu", "ALARM", &[("DBInstanceIdentifier", "db-1")]),
    );
    let r = post_sns(&url, "Notification", nowhere.body()).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["reason"], "no_target");

    assert!(
        requests(&admin, &ns).await?.is_empty(),
        "nothing refused opened a request"
    );
    // The same message as the first, unaltered, is still accepted.
    let r = post_sns(&url, "Notification", good).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_confirmed_only_for_allowed_topics() -> anyhow::Result<()> {
    let stack = Stack::get();
    let gw = Gateway::start(stack, None, "gw-cw-sub").await?;
    let url = gw.url("cloudwatch");
    let attempts = |result| {
        gw.state
            .metrics
            .sns_subscriptions
            .get_or_create(&SubscriptionLabels { result })
            .get()
    };

    let other = SnsDelivery::subscription(
        "SubscriptionConfirmation",
        "arn:aws:sns:eu-west-1:123456789012:someone-elses",
    );
    let r = post_sns(&url, "SubscriptionConfirmation", other.body()).await?;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        attempts("confirmed") + attempts("confirm_failed"),
        0,
        "no GET for a disallowed topic"
    );

    let forged = SnsDelivery {
        key: "intruder",
        ..SnsDelivery::subscription("SubscriptionConfirmation", SNS_TOPIC)
    };
    let r = post_sns(&url, "SubscriptionConfirmation", forged.body()).await?;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        attempts("confirmed") + attempts("confirm_failed"),
        0,
        "no GET for a forged message"
    );

    let elsewhere = SnsDelivery {
        subscribe_url: Some("https://evil.example.com/?Action=ConfirmSubscription".into()),
        ..SnsDelivery::subscription("SubscriptionConfirmation", SNS_TOPIC)
    };
    let r = post_sns(&url, "SubscriptionConfirmation", elsewhere.body()).await?;
    assert_eq!(r.status, 403, "a SubscribeURL off SNS: {}", r.text);

    // An allowed topic is confirmed. AWS is not reachable from the test
    // machine, so the GET fails and SNS is asked to re-send (503); either
    // way the attempt is what this asserts.
    let allowed = SnsDelivery::subscription("SubscriptionConfirmation", SNS_TOPIC);
    let r = post_sns(&url, "SubscriptionConfirmation", allowed.body()).await?;
    assert!(matches!(r.status, 200 | 503), "{}", r.text);
    assert_eq!(attempts("confirmed") + attempts("confirm_failed"), 1);

    let bye = SnsDelivery::subscription("UnsubscribeConfirmation", SNS_TOPIC);
    let r = post_sns(&url, "UnsubscribeConfirmation", bye.body()).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], "unsubscribed");
    assert_eq!(attempts("unsubscribed"), 1);
    Ok(())
}
