use clap::Parser;
use patient_service::{config::Settings, startup::Application};

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let (runtime, log) = (settings.runtime, settings.log.clone());
    common::runtime::run(runtime, &log, "patient-service", async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped(common::shutdown::signal()).await
    })
}
