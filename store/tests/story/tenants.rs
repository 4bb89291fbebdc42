//! Tenants: agencies, their apps and secrets, WeChat channels.

use piaojia_store::{AppKind, ChannelKind, Entity, NewAgency, NewApp, NewChannel, StoreError};
use uuid::Uuid;

use crate::Fixture;
use crate::support::{TestResult, agency, app, one_agency, secret};

chapters!(agencies, apps_and_secret_rotation, channels);

async fn agencies(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = store.create_agency(agency("A001")).await?;
    assert_eq!(a.code, "A001");
    assert_eq!(a.file_hosts, vec!["files.example.org".to_owned()]);
    assert!(matches!(
        store.create_agency(agency("A001")).await,
        Err(StoreError::Conflict("agency_code"))
    ));

    assert_eq!(store.agency(a.id).await?, Some(a.clone()));
    assert_eq!(store.agency_by_code("A001").await?, Some(a.clone()));
    assert_eq!(store.agency(Uuid::now_v7()).await?, None);
    assert_eq!(store.agency_by_code("nope").await?, None);

    // Upsert updates name and hosts of an existing code, keeping its identity.
    let updated = store
        .upsert_agency(NewAgency {
            code: "A001".to_owned(),
            name: "新名字".to_owned(),
            file_hosts: vec!["a.example.org".to_owned(), "b.example.org".to_owned()],
        })
        .await?;
    assert_eq!(updated.id, a.id);
    assert_eq!(updated.created_at, a.created_at);
    assert_eq!(updated.name, "新名字");
    assert_eq!(updated.file_hosts.len(), 2);
    // … and creates a missing one.
    let b = store.upsert_agency(agency("B002")).await?;
    assert_ne!(b.id, a.id);

    let all = store.list_agencies().await?;
    assert_eq!(
        all.iter().map(|x| x.code.as_str()).collect::<Vec<_>>(),
        ["A001", "B002"]
    );
    assert_eq!(all[0], updated);
    Ok(())
}

async fn apps_and_secret_rotation(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let agency_id = one_agency(&*store, "A001").await?;
    let other_agency = one_agency(&*store, "B002").await?;

    assert!(matches!(
        store.create_app(app("his-1", Uuid::now_v7())).await,
        Err(StoreError::NotFound(Entity::Referenced))
    ));
    let new = app("his-1", agency_id);
    let first_secret = new.secret.id;
    let created = store.create_app(new).await?;
    assert_eq!(created.kind, AppKind::Issuer);
    assert!(created.enabled);
    assert_eq!(created.agency_id, agency_id);
    assert_eq!(created.secrets.len(), 1);
    assert_eq!(created.secrets[0].id, first_secret);
    assert!(matches!(
        store.create_app(app("his-1", agency_id)).await,
        Err(StoreError::Conflict("app_id"))
    ));
    store
        .create_app(NewApp {
            kind: AppKind::Reimburser,
            callback_url: None,
            ..app("insurer-1", other_agency)
        })
        .await?;

    assert!(store.app("missing").await?.is_none());
    let listed = store.list_apps(Some(agency_id)).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].secrets.len(), 1);
    let all = store.list_apps(None).await?;
    assert_eq!(
        all.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
        ["his-1", "insurer-1"]
    );
    assert_eq!(all[1].kind, AppKind::Reimburser);

    // Enable/disable and callback.
    assert!(!store.set_app_enabled("his-1", false).await?.enabled);
    assert!(store.set_app_enabled("his-1", true).await?.enabled);
    let cleared = store.set_app_callback("his-1", None).await?;
    assert_eq!(cleared.callback_url, None);
    let set = store
        .set_app_callback("his-1", Some("https://new.example.org/cb".to_owned()))
        .await?;
    assert_eq!(set.callback_url.as_deref(), Some("https://new.example.org/cb"));
    assert!(matches!(
        store.set_app_enabled("missing", true).await,
        Err(StoreError::NotFound(Entity::App))
    ));
    assert!(matches!(
        store.set_app_callback("missing", None).await,
        Err(StoreError::NotFound(Entity::App))
    ));

    // Rotation: at most two active, newest first.
    let s2 = secret("sealed-2");
    let app2 = store.add_app_secret("his-1", s2.clone(), true).await?;
    assert_eq!(ids(&app2), [s2.id, first_secret]);
    let s3 = secret("sealed-3");
    let app3 = store.add_app_secret("his-1", s3.clone(), true).await?;
    assert_eq!(ids(&app3), [s3.id, s2.id]);
    assert!(app3.secrets[0].created_at > app3.secrets[1].created_at);
    assert_eq!(app3.secrets[0].sealed, "sealed-3");
    let ended = store.retire_old_app_secrets("his-1").await?;
    assert_eq!(ids(&ended), [s3.id]);
    // Retiring again changes nothing.
    assert_eq!(ids(&store.retire_old_app_secrets("his-1").await?), [s3.id]);
    // Without keep_previous every existing secret goes at once.
    store.add_app_secret("his-1", secret("sealed-4"), true).await?;
    let s5 = secret("sealed-5");
    let replaced = store.add_app_secret("his-1", s5.clone(), false).await?;
    assert_eq!(ids(&replaced), [s5.id]);
    // Reading agrees with what the writes returned.
    let read = store.app("his-1").await?.ok_or("app vanished")?;
    assert_eq!(ids(&read), [s5.id]);
    // The other app is untouched.
    let other = store.app("insurer-1").await?.ok_or("app vanished")?;
    assert_eq!(other.secrets.len(), 1);

    // A secret id is unique, and missing apps are reported.
    assert!(matches!(
        store.add_app_secret("his-1", s5.clone(), true).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(ids(&store.app("his-1").await?.ok_or("app vanished")?), [s5.id]);
    assert!(matches!(
        store.add_app_secret("missing", secret("x"), true).await,
        Err(StoreError::NotFound(Entity::App))
    ));
    assert!(matches!(
        store.retire_old_app_secrets("missing").await,
        Err(StoreError::NotFound(Entity::App))
    ));
    Ok(())
}

fn ids(app: &piaojia_store::App) -> Vec<Uuid> {
    app.secrets.iter().map(|s| s.id).collect()
}

async fn channels(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let channel = |agency_id: Uuid, kind: ChannelKind, app: &str| NewChannel {
        agency_id: Some(agency_id),
        kind,
        wechat_app_id: app.to_owned(),
        secret_sealed: "v1:sealed-secret".to_owned(),
        template_id: "tpl-1".to_owned(),
        fields: serde_json::json!({"thing1": "{agencyName}", "amount2": "{amount}元"}),
        page: Some("pages/receipt/index".to_owned()),
        message_token_sealed: Some("v1:token".to_owned()),
        encoding_aes_key_sealed: None,
        enabled: true,
        long_term: false,
    };

    let first = store
        .upsert_channel(channel(a, ChannelKind::WechatTemplate, "wx-shared"))
        .await?;
    assert_eq!(first.agency_id, Some(a));
    assert_eq!(first.kind, ChannelKind::WechatTemplate);
    assert_eq!(first.fields["amount2"], "{amount}元");
    assert_eq!(first.page.as_deref(), Some("pages/receipt/index"));
    assert!(first.enabled);

    // Same agency and kind: replaced in place.
    let replaced = store
        .upsert_channel(NewChannel {
            template_id: "tpl-2".to_owned(),
            page: None,
            enabled: false,
            encoding_aes_key_sealed: Some("v1:aes".to_owned()),
            ..channel(a, ChannelKind::WechatTemplate, "wx-shared")
        })
        .await?;
    assert_eq!(replaced.id, first.id);
    assert_eq!(replaced.created_at, first.created_at);
    assert!(replaced.updated_at >= first.updated_at);
    assert_eq!(replaced.template_id, "tpl-2");
    assert_eq!(replaced.page, None);
    assert!(!replaced.enabled);
    assert_eq!(replaced.encoding_aes_key_sealed.as_deref(), Some("v1:aes"));

    let sub = store
        .upsert_channel(channel(a, ChannelKind::WechatSubscribe, "wx-mini"))
        .await?;
    assert_ne!(sub.id, first.id);
    let other = store
        .upsert_channel(channel(b, ChannelKind::WechatTemplate, "wx-shared"))
        .await?;

    let mine = store.channels_for_agency(a).await?;
    assert_eq!(
        mine.iter().map(|c| (c.id, c.kind)).collect::<Vec<_>>(),
        [
            (sub.id, ChannelKind::WechatSubscribe),
            (first.id, ChannelKind::WechatTemplate)
        ]
    );
    assert_eq!(
        mine.iter().find(|c| c.id == first.id).map(|c| c.template_id.as_str()),
        Some("tpl-2")
    );
    let shared = store.channel_by_wechat_app("wx-shared").await?;
    let mut shared_ids: Vec<Uuid> = shared.iter().map(|c| c.id).collect();
    shared_ids.sort();
    let mut expected = vec![first.id, other.id];
    expected.sort();
    assert_eq!(shared_ids, expected);
    assert_eq!(store.channel_by_wechat_app("wx-mini").await?.len(), 1);
    assert!(store.channel_by_wechat_app("wx-none").await?.is_empty());
    assert!(store.channels_for_agency(Uuid::now_v7()).await?.is_empty());
    assert!(matches!(
        store
            .upsert_channel(channel(Uuid::now_v7(), ChannelKind::WechatTemplate, "wx"))
            .await,
        Err(StoreError::NotFound(Entity::Referenced))
    ));

    // The platform wallet: a channel of no agency, one per kind, replaced in place.
    assert!(store.platform_channels().await?.is_empty());
    let platform = |template: &str| NewChannel {
        agency_id: None,
        template_id: template.to_owned(),
        long_term: true,
        ..channel(a, ChannelKind::WalletSubscribe, "wx-wallet")
    };
    let wallet = store.upsert_channel(platform("tpl-w1")).await?;
    assert_eq!(wallet.agency_id, None);
    assert!(wallet.long_term);
    let wallet2 = store.upsert_channel(platform("tpl-w2")).await?;
    assert_eq!(wallet2.id, wallet.id);
    let listed = store.platform_channels().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].template_id, "tpl-w2");
    assert!(
        store
            .channels_for_agency(a)
            .await?
            .iter()
            .all(|c| c.kind != ChannelKind::WalletSubscribe)
    );
    // A wallet channel must not belong to an agency, nor an agency channel to none.
    assert!(
        store
            .upsert_channel(channel(a, ChannelKind::WalletSubscribe, "wx-w"))
            .await
            .is_err()
    );
    assert!(
        store
            .upsert_channel(NewChannel {
                agency_id: None,
                ..channel(a, ChannelKind::WechatTemplate, "wx-t")
            })
            .await
            .is_err()
    );
    Ok(())
}
